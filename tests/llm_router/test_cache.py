"""The disk cache: hits, misses on changed parameters, JSON only, never fatal."""

from __future__ import annotations

import sqlite3

from llm_router import Router
from llm_router.labels import LabelSet
from llm_router.router import llm_classifier
from llm_router.testing import Reply
from tests.llm_router.helpers import FixedClassifier

TEXT = "Dark matter halo profiles from weak lensing of galaxy clusters."
LABELS = LabelSet.full_taxonomy()


def chain(settings):
    return Router([llm_classifier(settings, LABELS), FixedClassifier()])


def test_second_call_is_a_cache_hit(make_settings, server):
    first = chain(make_settings()).classify(TEXT)
    second = chain(make_settings()).classify(TEXT)  # a new router: the cache is on disk
    assert (first.cached, second.cached) == (False, True)
    assert second.label == first.label and second.source == "llm"
    assert second.usage is not None and second.usage.requests == 0
    assert server.count == 1


def test_changing_the_model_misses(make_settings, server):
    chain(make_settings(model="a/one")).classify(TEXT)
    result = chain(make_settings(model="a/two")).classify(TEXT)
    assert result.cached is False
    assert server.count == 2


def test_changing_the_prompt_version_misses(make_settings, server, tmp_path):
    prompts = tmp_path / "prompts" / "classify"
    prompts.mkdir(parents=True)
    from llm_router.prompts import prompts_root

    original = (prompts_root() / "classify" / "v1.md").read_text()
    (prompts / "v1.md").write_text(original)
    (prompts / "v2.md").write_text(original.replace("arXiv moderator", "arXiv editor"))
    root = tmp_path / "prompts"
    chain(make_settings(prompts_dir=root, prompt="classify/v1")).classify(TEXT)
    hit = chain(make_settings(prompts_dir=root, prompt="classify/v1")).classify(TEXT)
    miss = chain(make_settings(prompts_dir=root, prompt="classify/v2")).classify(TEXT)
    assert (hit.cached, miss.cached) == (True, False)
    assert miss.prompt_version == "classify/v2"
    assert server.count == 2


def test_changing_structured_output_or_temperature_misses(make_settings, server):
    chain(make_settings()).classify(TEXT)
    chain(make_settings(structured_output="json_object")).classify(TEXT)
    chain(make_settings(temperature=0.7)).classify(TEXT)
    assert server.count == 3


def test_cache_off_sends_every_time(make_settings, server, monkeypatch):
    monkeypatch.setenv("LLM_ROUTER_CACHE", "off")
    from llm_router import Settings

    settings = Settings(
        **{k: v for k, v in make_settings().model_dump().items() if k not in {"cache", "api_key"}},
        api_key="k",
    )
    assert settings.cache is False
    chain(settings).classify(TEXT)
    chain(settings).classify(TEXT)
    assert server.count == 2


def test_invalid_answers_are_not_cached(make_settings, server):
    server.script(Reply.answer("nonsense"), Reply.answer("nonsense"))
    first = chain(make_settings()).classify(TEXT)
    second = chain(make_settings()).classify(TEXT)
    assert first.fallback_reason == "invalid_label"
    assert (second.source, second.cached) == ("llm", False)
    assert server.count == 3


def test_cache_values_are_json_not_pickle(make_settings, server, tmp_path):
    chain(make_settings()).classify(TEXT)
    db = sqlite3.connect(tmp_path / "cache" / "cache.db")
    modes = {row[0] for row in db.execute("SELECT mode FROM Cache")}
    db.close()
    assert modes and 4 not in modes  # diskcache's MODE_PICKLE is 4


def test_a_planted_pickle_entry_is_refused_not_loaded(make_settings, server, tmp_path):
    router = chain(make_settings())
    router.classify(TEXT)
    db = sqlite3.connect(tmp_path / "cache" / "cache.db")
    db.execute("UPDATE Cache SET mode = 4")  # claims every value is a pickle
    db.commit()
    db.close()
    result = chain(make_settings()).classify(TEXT)
    assert (result.source, result.cached) == ("llm", False)
    assert server.count == 2


def test_a_corrupt_cache_database_is_bypassed(make_settings, server, tmp_path, caplog):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "cache.db").write_bytes(b"this is not a sqlite database" * 100)
    result = chain(make_settings()).classify(TEXT)
    again = chain(make_settings()).classify(TEXT)
    assert (result.source, again.source) == ("llm", "llm")
    assert "disk cache" in caplog.text


def test_an_unwritable_cache_directory_is_bypassed(make_settings, server, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    result = chain(make_settings(cache_dir=blocker / "cache")).classify(TEXT)
    assert result.source == "llm"


def test_a_cached_label_outside_the_label_set_is_ignored(make_settings, server, tmp_path):
    from llm_router.llm.cache import DiskCache

    settings = make_settings()
    llm = llm_classifier(settings, LABELS)
    key = llm.inner.cache_key(TEXT)
    cache = DiskCache(tmp_path / "cache")
    cache.set(key, {"label": "not.a.label", "source": "llm"})
    cache.close()
    result = Router([llm, FixedClassifier()]).classify(TEXT)
    assert (result.label, result.cached) == ("cs.CV", False)
