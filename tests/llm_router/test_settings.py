"""Settings from the environment, and the public API surface."""

from __future__ import annotations

from pathlib import Path

import pytest

import llm_router
from llm_router import ConfigError, Settings
from llm_router.chain import local_order


def test_defaults_match_the_contract(tmp_path):
    s = Settings()
    assert s.api_key is None
    assert s.endpoint == "https://openrouter.ai/api/v1"
    assert s.model == "mistralai/mistral-7b-instruct"
    assert s.structured_output == "json_schema"
    assert (s.timeout_s, s.max_attempts, s.rpm) == (30.0, 3, None)
    assert s.model_dir == Path("models")
    assert s.fallbacks is None  # every trained kind, the better-measured first
    assert local_order(s.model_copy(update={"model_dir": tmp_path}))[0] == ("bert", "tfidf")
    assert s.cache is True


def test_environment_variables(monkeypatch, tmp_path):
    env = {
        "OPENROUTER_API_KEY": "sk-or-secret",
        "LLM_ROUTER_BASE_URL": "http://127.0.0.1:8080/v1",
        "LLM_ROUTER_MODEL": "qwen/qwen-2.5-7b-instruct",
        "LLM_ROUTER_STRUCTURED_OUTPUT": "json_object",
        "LLM_ROUTER_TIMEOUT_S": "7.5",
        "LLM_ROUTER_MAX_ATTEMPTS": "5",
        "LLM_ROUTER_RPM": "20",
        "LLM_ROUTER_CACHE_DIR": str(tmp_path),
        "LLM_ROUTER_MODEL_DIR": str(tmp_path / "m"),
        "LLM_ROUTER_FALLBACKS": "tfidf",
        "LLM_ROUTER_CACHE": "off",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    assert s.api_key is not None and s.api_key.get_secret_value() == "sk-or-secret"
    assert s.endpoint == "http://127.0.0.1:8080/v1"
    assert (s.model, s.structured_output, s.timeout_s, s.max_attempts, s.rpm) == (
        "qwen/qwen-2.5-7b-instruct",
        "json_object",
        7.5,
        5,
        20.0,
    )
    assert (s.cache_dir, s.model_dir, s.fallbacks, s.cache) == (
        tmp_path,
        tmp_path / "m",
        ("tfidf",),
        False,
    )


def test_llm_router_api_key_takes_precedence(monkeypatch):
    monkeypatch.setenv("OPENROUTER_API_KEY", "from-openrouter")
    monkeypatch.setenv("LLM_ROUTER_API_KEY", "from-router")
    assert Settings().api_key.get_secret_value() == "from-router"


def test_the_key_is_masked_everywhere():
    s = Settings(api_key="sk-visible-if-leaked")
    assert "sk-visible-if-leaked" not in repr(s)
    assert "sk-visible-if-leaked" not in str(s.model_dump())
    assert "sk-visible-if-leaked" not in s.model_dump_json()


@pytest.mark.parametrize(
    ("field", "value"),
    [("structured_output", "xml"), ("fallbacks", "bert,gpt"), ("max_attempts", 0), ("rpm", -1)],
)
def test_invalid_settings_are_rejected(field, value):
    with pytest.raises(ConfigError, match=field):
        Settings(**{field: value})


def test_unknown_prompt_version_is_a_config_error(tmp_path):
    from llm_router.errors import ConfigError
    from llm_router.prompts import load_prompt

    with pytest.raises(ConfigError, match="classify/v99"):
        load_prompt("classify/v99")
    with pytest.raises(ConfigError):
        load_prompt("../../etc/passwd")


def test_public_api_is_exactly_all():
    import inspect

    exported = {
        name
        for name in dir(llm_router)
        if not name.startswith("_") and not inspect.ismodule(getattr(llm_router, name))
    }
    assert exported == set(llm_router.__all__)
    for name in ("route", "aroute", "Router", "Settings", "Classification", "RouterError"):
        assert name in llm_router.__all__
    assert "classify_file" in llm_router.__all__


def test_importing_the_library_does_not_load_the_corpus_job():
    import subprocess
    import sys

    code = (
        "import sys, llm_router; print('llm_router.corpus.job' in sys.modules); "
        "from llm_router import classify_file; print(classify_file.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "llm_router.corpus.job"]


def test_importing_the_library_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, llm_router; print('torch' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
