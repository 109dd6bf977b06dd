"""The guards hold when the endpoint, the cache directory or the settings misbehave."""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import threading
import time

import pytest

from llm_router import ConfigError, Router, Settings
from llm_router.errors import AllClassifiersFailed
from llm_router.labels import LabelSet
from llm_router.llm.breaker import CircuitBreaker, Outcome
from llm_router.llm.budget import Budget, Price
from llm_router.llm.cache import DiskCache
from llm_router.llm.ratelimit import RateLimiter
from llm_router.llm.transport import parse_retry_after
from llm_router.router import llm_classifier
from llm_router.testing import ChatServer, Reply
from tests.llm_router.helpers import FixedClassifier

LABELS = LabelSet.full_taxonomy()
TEXTS = [f"Paper {i}: a convolutional network for segmenting street scenes." for i in range(20)]


def chain(settings, budget=None):
    return Router([llm_classifier(settings, LABELS, budget), FixedClassifier("math.AP")])


def with_cost(cost, body_usage=None):
    reply = Reply.answer("cs.CV", cost=cost)
    if body_usage is not None:
        reply.body["usage"] = body_usage
    return reply


# -- the budget holds -------------------------------------------------------------------------
@pytest.mark.parametrize("concurrency", [1, 8])
def test_a_usd_cap_holds_without_a_price(make_settings, server, concurrency):
    server.default = lambda _body: with_cost(0.004)
    budget = Budget(max_cost_usd=0.01)  # no price: the endpoint's reported cost teaches it
    results = chain(make_settings(cache=False), budget).classify_many(
        TEXTS, concurrency=concurrency
    )
    assert server.count == 2  # 2 × $0.004 ≤ $0.01 < 3 × $0.004
    assert budget.cost_usd == pytest.approx(0.008) and budget.cost_usd <= 0.01
    assert [r.fallback_reason for r in results].count("budget") == 18


def test_a_usd_cap_with_a_price_prices_completion_tokens_apart(make_settings, server):
    price = Price(prompt_per_mtok=1.0, completion_per_mtok=1000.0)
    assert price.cost(1000, 10) == pytest.approx(0.001 + 0.01)
    server.default = lambda _body: Reply.answer("cs.CV", prompt_tokens=400, completion_tokens=5)
    budget = Budget(max_cost_usd=0.5, price=price)
    chain(make_settings(cache=False, max_completion_tokens=64), budget).classify_many(
        TEXTS, concurrency=8
    )
    # Each reservation holds 64 completion tokens at $1000/M = $0.064 (plus the prompt), so
    # at most 7 are ever outstanding; settled at 5 completion tokens, more fit in the end.
    assert budget.cost_usd <= 0.5
    assert server.count == budget.requests


@pytest.mark.parametrize("bad", [math.nan, -1.0, math.inf])
def test_an_untrusted_cost_never_disables_the_cap(make_settings, server, bad):
    server.script(with_cost(bad))
    server.default = lambda _body: with_cost(1.0)
    budget = Budget(max_cost_usd=0.01)
    chain(make_settings(cache=False), budget).classify_many(TEXTS[:5], concurrency=1)
    assert math.isfinite(budget.cost_usd)
    # The untrusted cost teaches nothing; the next request (alone) reports $1 and no
    # further request goes out. Only a price bounds that first real cost.
    assert server.count == 2 and budget.untrusted_costs == 1


def test_an_untrusted_cost_is_settled_at_the_price(make_settings, server):
    server.default = lambda _body: with_cost(math.nan)
    budget = Budget(max_cost_usd=1.0, price=Price(2.0, 2.0))
    chain(make_settings(cache=False), budget).classify_many(TEXTS[:4], concurrency=2)
    assert budget.cost_usd == pytest.approx(4 * 105 * 2.0 / 1e6)  # 100 + 5 tokens each


def test_usage_counts_every_attempt(make_settings, server):
    server.script(Reply.error(503), Reply.answer("cs.CV"))
    first = chain(make_settings(cache=False)).classify(TEXTS[0])
    assert (first.source, first.usage.requests, first.usage.prompt_tokens) == ("llm", 2, 100)
    server.script(Reply.answer("not a code", raw=True), Reply.answer("cs.CV"))
    reasked = chain(make_settings(cache=False)).classify(TEXTS[1])
    assert reasked.usage.requests == 2 and reasked.usage.prompt_tokens == 200
    server.script(*[Reply.error(503)] * 3)
    failed = chain(make_settings(cache=False)).classify(TEXTS[2])
    assert (failed.source, failed.fallback_reason, failed.usage.requests) == (
        "math.AP" and "tfidf",
        "http_503",
        3,
    )


# -- the endpoint can send anything ----------------------------------------------------------
@pytest.mark.parametrize(
    "usage",
    [{"prompt_tokens": "n/a"}, "oops", {"prompt_tokens": {"n": 1}}, {"cost": "free"}, [1, 2]],
)
def test_a_malformed_usage_is_a_bad_response_never_a_crash(make_settings, server, usage):
    server.default = lambda _body: with_cost(None, usage)
    result = chain(make_settings(cache=False)).classify(TEXTS[0])
    assert (result.source, result.fallback_reason) == ("tfidf", "bad_response")
    assert result.usage.requests == 3  # retried as transient
    server.script(with_cost(None, usage))
    server.default = lambda _body: Reply.answer("cs.CV")
    again = chain(make_settings(cache=False)).classify(TEXTS[1])
    assert (again.source, again.usage.requests) == ("llm", 2)


@pytest.mark.parametrize(
    "body", [{"choices": []}, {"choices": "x"}, {"choices": [{"message": 3}]}, [1], "text"]
)
def test_a_body_without_a_completion_is_a_bad_response(make_settings, server, body):
    server.default = lambda _body: (
        Reply(body=body) if not isinstance(body, str) else Reply(body=b'"text"')
    )
    result = chain(make_settings(cache=False, max_attempts=1)).classify(TEXTS[0])
    assert result.fallback_reason == "bad_response"


def test_missing_usage_is_zero_usage(make_settings, server):
    reply = Reply.answer("cs.CV")
    del reply.body["usage"]
    server.script(reply)
    result = chain(make_settings(cache=False)).classify(TEXTS[0])
    assert result.source == "llm" and result.usage.prompt_tokens == 0


@pytest.mark.parametrize("header", ["soon", "inf", "nan", "-5", "", "Wed, 99 Foo 2024"])
def test_an_unparseable_retry_after_means_no_header(make_settings, server, header):
    assert parse_retry_after({"retry-after": header}) is None
    server.script(Reply.error(429, **{"Retry-After": header}), Reply.answer("cs.CV"))
    result = chain(make_settings(cache=False)).classify(TEXTS[0])
    assert result.source == "llm" and result.usage.requests == 2


def test_a_long_retry_after_does_not_stall_anyone(make_settings, server):
    server.script(Reply.error(429, **{"Retry-After": "3600"}))
    router = chain(make_settings(cache=False, retry_after_max_s=0.3))
    first = router.classify(TEXTS[0])
    second = router.classify(TEXTS[1])  # the shared limiter held back at most 0.3 s
    assert first.fallback_reason == "rate_limited" and second.source == "llm"
    assert server.count == 2  # the hour-long Retry-After was not waited for, nor retried


class FakeClock:
    """Time that moves only when someone sleeps: waits are asserted, never timed."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_limiter_honours_retry_after_without_an_rpm():
    clock = FakeClock()
    limiter = RateLimiter(None, max_pause_s=0.3, clock=clock, sleep=clock.sleep)
    limiter.slow_down(3600)
    assert limiter.acquire() == pytest.approx(0.3)  # capped at max_pause_s
    assert clock.slept == [pytest.approx(0.3)]
    assert limiter.acquire() == 0.0


def test_client_errors_do_not_trip_the_breaker(make_settings, server):
    server.script(*[Reply.error(400)] * 6, *[Reply.answer("not a code", raw=True)] * 4)
    router = chain(make_settings(cache=False, breaker_threshold=2))
    results = router.classify_many(TEXTS[:8], concurrency=1)
    assert [r.fallback_reason for r in results[:6]] == ["http_400"] * 6
    assert router.classify(TEXTS[9]).source == "llm"  # still on


def test_an_open_breaker_says_circuit_open_and_lets_one_probe_through(make_settings, server):
    from llm_router.llm.client import LLMClassifier
    from llm_router.prompts import load_prompt

    server.default = lambda _body: Reply.error(503)
    settings = make_settings(
        cache=False, breaker_threshold=2, breaker_cooldown_s=30, max_attempts=1
    )
    clock = FakeClock()
    breaker = CircuitBreaker(2, cooldown_s=30, auth_cooldown_s=300, clock=clock)
    llm = LLMClassifier(settings, LABELS, load_prompt(settings.prompt), breaker=breaker)
    router = Router([llm, FixedClassifier("math.AP")])
    router.classify_many(TEXTS[:2], concurrency=1)
    sent = server.count
    assert router.classify(TEXTS[2]).fallback_reason == "circuit_open"
    assert server.count == sent
    clock.now += 30  # the cool-down passes
    server.default = lambda _body: Reply.answer("cs.CV", delay_s=0.5)
    results = router.classify_many(TEXTS[3:11], concurrency=8)
    assert server.count == sent + 1  # one probe; the rest did not wait for it
    assert sorted(r.source for r in results) == ["llm"] + ["tfidf"] * 7
    assert router.classify(TEXTS[12]).source == "llm"  # the probe closed the breaker


def test_breaker_counts_only_transient_failures():
    breaker = CircuitBreaker(threshold=2, cooldown_s=60, auth_cooldown_s=60)
    for _ in range(5):
        breaker.record(Outcome.ANSWERED, "http_404", probe=breaker.admit())
    assert not breaker.is_open
    breaker.record(Outcome.FAILED, "timeout", probe=breaker.admit())
    breaker.record(Outcome.FAILED, "timeout", probe=breaker.admit())
    assert breaker.is_open and breaker.cause == "timeout"


# -- the cache directory is not trusted ------------------------------------------------------
def test_a_planted_file_row_neither_reads_nor_deletes_outside_the_cache(
    make_settings, server, tmp_path
):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    settings = make_settings()
    router = chain(settings)
    router.classify(TEXTS[0])
    router.close()
    with sqlite3.connect(settings.cache_dir / "cache.db") as db:
        db.execute("UPDATE Cache SET mode = 2, filename = ?, value = NULL", (str(victim),))
    again = chain(settings).classify(TEXTS[0])
    assert victim.read_text() == "precious"
    assert not again.cached and server.count == 2  # refused, asked again


def test_a_locked_cache_is_retried_later(tmp_path):
    cache = DiskCache(tmp_path / "c", timeout_s=0.05)
    cache.set("a", {"x": 1})
    holder = sqlite3.connect(tmp_path / "c" / "cache.db", timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    cache.set("b", {"x": 2})
    assert cache.stats["bypassed_writes"] == 1
    holder.rollback()
    holder.close()
    cache.set("c", {"x": 3})  # still backing off: skipped, counted
    time.sleep(1.1)
    cache.set("d", {"x": 4})
    assert cache.get("d") == {"x": 4} and cache.stats["bypassed_writes"] == 2


# -- batches never lose rows -----------------------------------------------------------------
class FailsOn:
    name = "tfidf"

    def classify(self, text):
        if "unanswerable" in text:
            raise AllClassifiersFailed([])
        return FixedClassifier().classify(text)


def test_classify_many_can_return_failures_in_place():
    from llm_router.chain import Unavailable
    from llm_router.errors import ModelNotAvailable

    missing = Unavailable(ModelNotAvailable("gone", classifier="bert", reason="missing"))
    router = Router([missing, FixedClassifier()])
    texts = ["fine", "   ", 7, "fine again"]
    results = router.classify_many(texts, concurrency=4, return_exceptions=True)
    assert results[0].label == "math.AP" and results[3].label == "math.AP"
    assert isinstance(results[1], ValueError) and isinstance(results[2], TypeError)
    lonely = Router([missing])
    out = lonely.classify_many(["a", "b"], concurrency=2, return_exceptions=True)
    assert all(isinstance(r, AllClassifiersFailed) for r in out)
    with pytest.raises(AllClassifiersFailed):
        lonely.classify_many(["a", "b"], concurrency=2)


def test_aroute_builds_the_router_off_the_event_loop(monkeypatch, tmp_path):
    import llm_router.router as router_module

    real = Router.from_settings

    def slow_build(settings=None, **kwargs):
        time.sleep(0.5)  # a model load
        return real(settings, **kwargs)

    monkeypatch.setattr(Router, "from_settings", staticmethod(slow_build))
    monkeypatch.setattr(router_module, "_routers", type(router_module._routers)())
    monkeypatch.setattr(
        router_module.Router,
        "_classify",
        lambda self, text: FixedClassifier().classify(text),
    )
    stamps: list[float] = []

    async def ticker():
        for _ in range(40):
            await asyncio.sleep(0.01)
            stamps.append(time.monotonic())

    async def main():
        settings = Settings(model_dir=tmp_path, cache=False)
        await asyncio.gather(router_module.aroute("text", settings=settings), ticker())

    asyncio.run(main())
    # What the test is about: the loop never stood still for the build (0.5 s of sleep).
    # A build on the loop shows as one gap of 0.5 s or more between two ticks.
    assert max(b - a for a, b in zip(stamps, stamps[1:], strict=False)) < 0.5


def test_aclassify_works_after_close():
    router = Router([FixedClassifier()])

    async def twice():
        first = await router.aclassify("one")
        router.close()
        return first, await router.aclassify("two")

    first, second = asyncio.run(twice())
    assert first.label == second.label == "math.AP"
    router.close()


def test_routers_evicted_from_the_default_cache_are_closed(monkeypatch, make_settings):
    import llm_router.router as router_module

    monkeypatch.setattr(router_module, "_routers", type(router_module._routers)())
    first = make_settings(model="m0")
    router_module.route(TEXTS[0], settings=first)
    oldest = router_module._routers[first]
    llm = oldest.classifiers[0].llm.inner
    assert llm._client is not None
    for i in range(1, router_module._ROUTERS_MAX + 1):
        router_module.route(TEXTS[0], settings=make_settings(model=f"m{i}"))
    assert first not in router_module._routers and llm._client is None


# -- settings and answers --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LLM_ROUTER_TIMEOUT_S", "abc"),
        ("LLM_ROUTER_RPM", "-3"),
        ("LLM_ROUTER_STRUCTURED_OUTPUT", "xml"),
        ("LLM_ROUTER_DEVICE", "gpu"),
        ("LLM_ROUTER_FALLBACKS", "tfidf,tfidf"),
        ("LLM_ROUTER_PROMPT", "classify/v99"),
        ("LLM_ROUTER_CACHE", "maybe"),
    ],
)
def test_a_bad_environment_value_is_one_line_naming_the_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        Settings()
    message = str(info.value)
    assert variable in message and "\n" not in message


def test_an_unknown_variable_is_warned_about_with_the_closest_name(monkeypatch, caplog):
    monkeypatch.setenv("LLM_ROUTER_FALLBACK", "tfidf")
    with caplog.at_level(logging.WARNING, logger="llm_router.settings"):
        Settings()
    assert "LLM_ROUTER_FALLBACK " in caplog.text and "LLM_ROUTER_FALLBACKS" in caplog.text


@pytest.mark.parametrize(
    "answer", ["astro-ph", "Astrophysics", "cond-mat", "cs.CV: no wait, it is math.AP"]
)
def test_a_coarse_or_double_answer_is_invalid_and_reasked(make_settings, server, answer):
    assert LABELS.parse_answer(answer) is None
    server.script(Reply.answer(answer), Reply.answer("astro-ph.CO"))
    result = chain(make_settings(cache=False)).classify(TEXTS[0])
    assert (result.label, result.usage.requests) == ("astro-ph.CO", 2)
    if answer == "astro-ph":
        reask = server.requests[1].body["messages"][-1]["content"]
        assert "astro-ph.CO" in reask and "astro-ph.SR" in reask


def test_credentials_in_the_base_url_are_redacted(make_settings, server, caplog):
    url = server.url.replace("http://", "http://user:hunter2@") + "?api_key=topsecret"
    settings = make_settings(base_url=url, max_attempts=2, cache=False)
    server.script(Reply.error(503), Reply.answer("cs.CV"))
    with caplog.at_level(logging.DEBUG, logger="llm_router"):
        chain(settings).classify(TEXTS[0])
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("llm_router")]
    assert any("***@127.0.0.1" in line for line in ours)
    assert not any("hunter2" in line or "topsecret" in line for line in ours)


def test_latency_covers_failed_attempts(make_settings, server):
    server.default = lambda _body: Reply(status=503, body={}, delay_s=0.3)
    result = chain(make_settings(cache=False, max_attempts=2)).classify(TEXTS[0])
    assert result.source == "tfidf" and result.latency_ms >= 600


def test_a_model_dir_that_is_not_there_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    router = Router.from_settings(Settings(cache=False))
    with pytest.raises(AllClassifiersFailed) as info:
        router.classify("a paper")
    assert str(tmp_path / "models" / "tfidf") in str(info.value)
    assert "LLM_ROUTER_MODEL_DIR" in str(info.value)


def test_budget_waits_are_released_when_nothing_was_sent():
    budget = Budget(max_cost_usd=1.0)
    first = budget.reserve(10)
    done = threading.Event()

    def second():
        budget.release(budget.reserve(10))
        done.set()

    threading.Thread(target=second, daemon=True).start()
    assert not done.wait(0.2)  # no price and no cost seen: one request at a time
    budget.release(first)
    assert done.wait(2) and budget.requests == 0


def test_chat_server_port_refuses_after_stop():
    server = ChatServer().start()
    url = server.url
    server.stop()
    settings = Settings(api_key="k", base_url=url, cache=False, retry_max_wait_s=0)
    result = chain(settings).classify(TEXTS[0])
    assert result.fallback_reason == "connection_error"


@pytest.mark.parametrize("answer", ["astro-ph", "Astrophysics", "cond-mat", "Condensed Matter"])
def test_a_coarse_answer_is_never_read_as_the_catch_all(answer):
    # A deployed set like a trained model's: rare codes merged into `other`.
    raw = ["astro-ph.CO"] * 120 + ["cond-mat.soft"] * 120 + ["astro-ph"] * 5 + ["cond-mat"] * 5
    labels = LabelSet.from_raw_labels(raw)
    assert "other" in labels and labels.to_deployed("astro-ph") == "other"
    assert labels.parse_answer(answer) is None
    assert labels.parse_answer("astro-ph.CO") == "astro-ph.CO"


def _manifest(root, kind, top1, test_ids=("a", "b")):
    import json

    (root / kind).mkdir(parents=True, exist_ok=True)
    manifest = {
        "kind": kind,
        "label_set": {"labels": ["cs.CV", "math.AP"], "mapping": {}},
        "data": {"sha256": "same-data"},
        "split": {"test_ids": list(test_ids)},
        "metrics": {"top1": top1},
    }
    (root / kind / "manifest.json").write_text(json.dumps(manifest))


def test_the_weaker_local_model_does_not_go_first_by_default(tmp_path):
    from llm_router.chain import build_chain

    _manifest(tmp_path, "bert", 0.41)
    _manifest(tmp_path, "tfidf", 0.70)
    assert build_chain(Settings(model_dir=tmp_path)).order == ("tfidf", "bert")
    chosen = Settings(model_dir=tmp_path, fallbacks="bert,tfidf")  # set explicitly: obeyed
    assert build_chain(chosen).order == ("bert", "tfidf")
    _manifest(tmp_path, "bert", 0.90)
    assert build_chain(Settings(model_dir=tmp_path)).order == ("bert", "tfidf")
    _manifest(tmp_path, "bert", 0.41, test_ids=("c",))  # another split: not comparable
    assert build_chain(Settings(model_dir=tmp_path)).order == ("bert", "tfidf")


def test_money_spent_never_goes_down_while_reservations_settle():
    """The progress bars show ``spent_usd``: settled costs only. A reservation that settles
    lower than it was estimated moves ``cost_usd`` down, never the money spent."""
    budget = Budget(max_cost_usd=1.0, price=Price(10.0, 10.0))
    first, second = budget.reserve(1000, 64), budget.reserve(1000, 64)
    seen = [budget.snapshot()["spent_usd"]]
    assert seen == [0.0] and budget.snapshot()["reserved_usd"] > 0
    budget.settle(first, 100, 5, 0.0002)
    seen.append(budget.snapshot()["spent_usd"])
    budget.settle(second, 90, 5, 0.0001)
    seen.append(budget.snapshot()["spent_usd"])
    assert seen == sorted(seen) and seen[-1] == pytest.approx(0.0003)
    assert budget.snapshot()["reserved_usd"] == 0.0
