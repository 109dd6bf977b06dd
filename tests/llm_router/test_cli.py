"""The installed ``llm-router`` command: every subcommand, ``--version``, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version

import pytest

COMMAND = shutil.which("llm-router")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [COMMAND] if COMMAND else [sys.executable, "-m", "llm_router"]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.skipif(COMMAND is None, reason="the package is not installed (pip install -e .)")
def test_the_command_is_installed():
    assert run("--version").stdout.strip() == f"llm-router {version('llm-router')}"


def test_help_lists_every_subcommand():
    out = run("--help").stdout
    for name in ("classify", "serve", "eval", "train", "info"):
        assert name in out


@pytest.mark.parametrize(
    ("argv", "prog"),
    [(("eval", "--help"), "llm-router eval"), (("train", "--help"), "llm-router train")],
)
def test_delegated_subcommands_use_their_package_parser(argv, prog):
    done = run(*argv)
    assert done.returncode == 0
    assert done.stdout.startswith(f"usage: {prog}")


def test_info_describes_settings_and_installed_models(tmp_path):
    done = run("info", env={"LLM_ROUTER_MODEL_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["api_key"] == "unset"
    assert info["local_models"] == {"bert": "not trained", "tfidf": "not trained"}
    assert info["chain"] == ["llm", "bert", "tfidf"]
    assert info["calibration"].startswith("none for this setup")


def test_info_names_the_calibration_profile_in_force(tmp_path, trained_models):
    from fallback_models.registry import MODELS
    from llm_router.settings import Settings
    from llm_router.voter import Profile, ProfileKey, VoterParams, write_profile

    root = tmp_path / "models"
    root.mkdir()
    (root / "tfidf").symlink_to(trained_models / "tfidf")
    settings = Settings()
    key = ProfileKey(
        model=settings.model,
        prompt_version=settings.prompt,
        strategy="llm",
        local_kind="tfidf",
        local_sha256=MODELS.sha256(root, "tfidf"),
    )
    params = VoterParams(alpha=1.0, bonus=2.0, alone_bias=0.0)
    write_profile(root, Profile(key=key, created="2026-12-07", params=params, rows={"fit": 300}))
    done = run("info", env={"LLM_ROUTER_MODEL_DIR": str(root)})
    info = json.loads(done.stdout)
    assert "fitted on 300 rows" in info["calibration"] and "tfidf" in info["calibration"]


def test_info_of_a_directory_without_a_manifest_is_a_one_line_error(tmp_path):
    done = run("info", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: no manifest.json in {tmp_path}"


def test_an_unknown_subcommand_is_a_one_line_error():
    done = run("classfy")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("error: argument command: invalid choice: 'classfy'")


def test_an_unknown_local_model_is_a_config_error(tmp_path):
    done = run("info", env={"LLM_ROUTER_FALLBACKS": "tfidf,gpt"})
    assert done.returncode == 2
    assert "unknown local model gpt (known: bert, tfidf, ensemble)" in done.stderr
