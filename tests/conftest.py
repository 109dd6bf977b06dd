"""Shared fixtures: a clean environment, a scripted chat server, settings pointing at it."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_router import Settings
from llm_router.testing import ChatServer, fixed_label


def default_sigint() -> None:
    """``preexec_fn`` of a child that a test interrupts: a shell starts background jobs with
    SIGINT ignored and children inherit that, so the child restores the default first."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_after(argv: list[str], server: ChatServer, requests: int) -> tuple[int, str]:
    """Run ``python -m`` ``argv`` in a child, press Ctrl-C once ``server`` has seen
    ``requests`` requests, and return the exit code and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *argv],
        preexec_fn=default_sigint,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Waits for the requests, not for a time: a child that exits first ends the wait.
    assert server.wait_for(requests, stop=lambda: proc.poll() is not None), proc.communicate()
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "arxiv"
ABSTRACTS = SHARED_DATA / "arxiv_abstracts.jsonl.gz"
TAXONOMY = SHARED_DATA / "taxonomy.json"
TEST_KEY = "sk-or-v1-TESTKEY-0123456789abcdef-NEVER-LOG-ME"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LLM_ROUTER_") or name == "OPENROUTER_API_KEY":
            monkeypatch.delenv(name)


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer(default=fixed_label("cs.CV")) as srv:
        yield srv


@pytest.fixture
def make_settings(tmp_path: Path, server: ChatServer) -> Callable[..., Settings]:
    """Settings aimed at the scripted server: fast retries, a private cache, no models."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "api_key": TEST_KEY,
            "base_url": server.url,
            "retry_max_wait_s": 0,
            "timeout_s": 5,
            "cache_dir": tmp_path / "cache",
            "model_dir": tmp_path / "models",
        }
        values.update(overrides)
        return Settings(**values)

    return make


def _read_shared(n: int | None = None) -> list[dict[str, Any]]:
    if not ABSTRACTS.is_file():
        pytest.skip(f"shared data not found at {ABSTRACTS}")
    rows = []
    with gzip.open(ABSTRACTS, "rt", encoding="utf-8") as handle:
        for line in handle:
            rows.append(json.loads(line))
    return rows if n is None else rows[:n]


@pytest.fixture(scope="session")
def shared_rows() -> list[dict[str, Any]]:
    """Every row of the shared arXiv data set (read once per test session)."""
    return _read_shared()


@pytest.fixture(scope="session")
def sample_rows(shared_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """4,000 real rows spread over the whole file (it is sorted by id)."""
    step = max(1, len(shared_rows) // 4000)
    return shared_rows[::step][:4000]


@pytest.fixture(scope="session")
def sample_file(
    tmp_path_factory: pytest.TempPathFactory, sample_rows: list[dict[str, Any]]
) -> Path:
    path = tmp_path_factory.mktemp("data") / "sample.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for row in sample_rows:
            handle.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory, sample_file: Path) -> Path:
    """A model root holding a real TF-IDF model trained on ``sample_file`` (session-wide)."""
    from tests.models_fixture import train_small_tfidf

    return train_small_tfidf(sample_file, tmp_path_factory.mktemp("models"))
