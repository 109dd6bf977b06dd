"""The chain, the public entry points, input validation, rate limiting and secrecy."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from llm_router import AllClassifiersFailed, Classification, Router, aroute, route
from llm_router.labels import LabelSet
from llm_router.llm.ratelimit import RateLimiter, Schedule
from llm_router.router import llm_classifier
from llm_router.testing import Reply
from tests.conftest import TEST_KEY
from tests.llm_router.helpers import FixedClassifier, MissingClassifier

TEXT = "We compute one-loop amplitudes in N=4 super Yang-Mills theory using unitarity cuts."
LABELS = LabelSet.full_taxonomy()


def chain(settings, limiter=None):
    return Router(
        [llm_classifier(settings, LABELS, limiter=limiter), MissingClassifier(), FixedClassifier()],
        max_input_chars=settings.max_input_chars,
    )


def test_without_a_key_answers_locally_and_sends_nothing(make_settings, server, caplog):
    settings = make_settings(api_key=None)
    with caplog.at_level(logging.WARNING):
        router = chain(settings)
        results = [router.classify(TEXT), router.classify(TEXT + " More.")]
    assert all(r.source == "tfidf" and r.fallback_reason == "no_api_key" for r in results)
    assert server.count == 0
    assert sum("no API key" in rec.getMessage() for rec in caplog.records) == 1


def test_the_chain_reports_the_first_failure_reason(make_settings, server):
    server.default = lambda _b: Reply.error(503)
    fallback = FixedClassifier("hep-th")
    router = Router(
        [llm_classifier(make_settings(max_attempts=1), LABELS), MissingClassifier(), fallback]
    )
    result = router.classify(TEXT)
    assert (result.label, result.source, result.fallback_reason) == ("hep-th", "tfidf", "http_503")
    assert fallback.calls == 1


def test_all_classifiers_failing_raises_with_every_reason(make_settings):
    router = Router([llm_classifier(make_settings(api_key=None), LABELS), MissingClassifier()])
    with pytest.raises(AllClassifiersFailed) as info:
        router.classify(TEXT)
    assert [e.reason for e in info.value.errors] == ["no_api_key", "missing_artifacts"]


@pytest.mark.parametrize(
    ("bad", "error", "words"),
    [
        (None, TypeError, "NoneType"),
        (42, TypeError, "int"),
        (b"bytes abstract", TypeError, "decode"),
        (["a list"], TypeError, "list"),
        ("", ValueError, "empty"),
        ("   \n\t ", ValueError, "empty"),
        ("\x00\x01\x02", ValueError, "empty"),
    ],
)
def test_bad_input_raises_clearly_and_sends_nothing(make_settings, server, bad, error, words):
    with pytest.raises(error, match=words):
        chain(make_settings()).classify(bad)
    assert server.count == 0


def test_a_bad_text_in_a_batch_is_named_and_nothing_is_sent(make_settings, server):
    with pytest.raises(ValueError, match=r"texts\[2\]"):
        chain(make_settings()).classify_many([TEXT, TEXT, "  "], concurrency=4)
    assert server.count == 0


@pytest.mark.parametrize(
    "odd",
    [
        "\ud800 lone surrogate in " + TEXT,
        "\u202e" + TEXT,
        "$$\\int_0^1 f(x)\\,dx$$",
        TEXT + "\x00" * 10,
    ],
)
def test_odd_but_valid_text_gets_a_valid_label(make_settings, server, odd):
    result = chain(make_settings()).classify(odd)
    assert result.label in LABELS
    assert server.count == 1


def test_classify_many_keeps_input_order(make_settings, server):
    server.default = lambda body: Reply.answer(
        "hep-th" if "amplitudes" in body["messages"][1]["content"] else "cs.CV", delay_s=0.02
    )
    texts = [
        f"{TEXT} ({i})" if i % 3 == 0 else f"Image segmentation benchmark {i}" for i in range(30)
    ]
    results = chain(make_settings()).classify_many(texts, concurrency=8)
    assert [r.label for r in results] == ["hep-th" if i % 3 == 0 else "cs.CV" for i in range(30)]
    assert server.count == 30


def test_aclassify_and_aroute(make_settings, server):
    router = chain(make_settings())

    async def main():
        return await asyncio.gather(*(router.aclassify(f"{TEXT} {i}") for i in range(5)))

    results = asyncio.run(main())
    assert [r.source for r in results] == ["llm"] * 5
    settings = make_settings(fallbacks="tfidf", cache=False)
    assert asyncio.run(aroute(TEXT, settings=settings)).label == "cs.CV"


def test_route_uses_environment_settings(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENROUTER_API_KEY", TEST_KEY)
    monkeypatch.setenv("LLM_ROUTER_BASE_URL", server.url)
    monkeypatch.setenv("LLM_ROUTER_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("LLM_ROUTER_MODEL_DIR", str(tmp_path / "m"))
    monkeypatch.setenv("LLM_ROUTER_MODEL", "env/model")
    result = route(TEXT)
    assert (result.label, result.source) == ("cs.CV", "llm")
    assert server.requests[0].body["model"] == "env/model"
    assert route(TEXT).cached is True
    assert server.count == 1


class SteppingClock:
    """Time that moves only when someone sleeps (every sleeper moves it for all)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += max(seconds, 1e-6)


class RecordingLimiter(RateLimiter):
    """Records, for every caller, the slot it was given and when it went on."""

    def __init__(self, rpm: float, clock: SteppingClock) -> None:
        self.mine = threading.local()
        self.log: list[tuple[float, float]] = []
        schedule = Schedule(rpm, clock=clock)
        reserve = schedule.reserve

        def recorded() -> float:
            self.mine.slot = reserve()
            return self.mine.slot

        schedule.reserve = recorded  # type: ignore[method-assign]
        super().__init__(slots=schedule, clock=clock, sleep=clock.sleep)

    def acquire(self, abort=None):
        waited = super().acquire(abort)
        self.log.append((self.mine.slot, self.clock()))
        return waited


def assert_spaced(log: list[tuple[float, float]], interval: float, n: int) -> None:
    slots = sorted(slot for slot, _ in log)
    assert len(slots) == n
    assert min(b - a for a, b in zip(slots, slots[1:], strict=False)) >= interval - 1e-9
    assert all(went_on >= slot for slot, went_on in log)  # nobody left before its slot


def test_rpm_limit_spaces_requests_across_threads(make_settings, server):
    settings = make_settings(rpm=600, cache=False)  # one request per 0.1 s
    limiter = RecordingLimiter(settings.rpm, SteppingClock())
    router = chain(settings, limiter=limiter)
    router.classify_many([f"{TEXT} {i}" for i in range(8)], concurrency=8)
    assert server.count == 8
    assert_spaced(limiter.log, 0.1, 8)  # no burst: every request waited for its own slot


def test_rate_limiter_holds_across_raw_threads():
    limiter = RecordingLimiter(1200, SteppingClock())  # 50 ms apart

    def worker():
        for _ in range(3):
            limiter.acquire()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert_spaced(limiter.log, 0.05, 12)


def test_the_key_never_appears_in_logs_or_errors(make_settings, server, caplog):
    server.script(Reply.error(503))
    server.default = lambda _body: Reply.error(401)
    with caplog.at_level(logging.DEBUG):
        settings = make_settings(max_attempts=2)
        router = chain(settings)
        result = router.classify(TEXT)
        assert result.fallback_reason == "http_401"
        with pytest.raises(AllClassifiersFailed) as info:
            Router([llm_classifier(settings, LABELS)]).classify(TEXT)
    assert TEST_KEY not in caplog.text
    assert TEST_KEY not in str(info.value) and TEST_KEY not in repr(info.value.errors)
    assert TEST_KEY not in repr(settings) and TEST_KEY not in settings.model_dump_json()
    assert TEST_KEY not in result.model_dump_json()


def test_a_failed_local_load_is_tried_again_after_a_back_off_and_a_new_model_is_swapped_in():
    from llm_router.chain import LazyClassifier
    from llm_router.errors import ModelNotAvailable

    now = [0.0]
    version = ["none"]
    attempts = []

    class Model:
        def __init__(self, label):
            self.name, self.label = "tfidf", label

        def classify(self, text):
            return Classification(label=self.label, source="tfidf")

    def load():
        attempts.append(now[0])
        if version[0] == "none":
            raise ModelNotAvailable(
                "not trained yet", classifier="tfidf", reason="missing_artifacts"
            )
        if version[0] == "half-written":
            raise ModelNotAvailable(
                "sha256 mismatch", classifier="tfidf", reason="tampered_artifacts"
            )
        return Model(version[0])

    lazy = LazyClassifier(
        "tfidf", load, version=lambda: version[0], retry_s=5, check_s=1, clock=lambda: now[0]
    )
    with pytest.raises(ModelNotAvailable):
        lazy.classify("x")
    with pytest.raises(ModelNotAvailable):
        lazy.classify("x")  # within the back-off: not loaded again
    assert attempts == [0.0]
    version[0] = "cs.CV"  # the model appears
    now[0] = 5.0
    assert lazy.classify("x").label == "cs.CV"
    version[0] = "half-written"  # replaced on disk, read half-way
    now[0] = 7.0
    assert lazy.classify("x").label == "cs.CV"  # the last good model answers
    version[0] = "math.CO"
    now[0] = 7.5
    assert lazy.classify("x").label == "cs.CV"  # looked at again only every check_s
    now[0] = 9.0
    assert lazy.classify("x").label == "math.CO"
    assert attempts == [0.0, 5.0, 7.0, 9.0]


def test_route_never_closes_a_router_that_has_a_call_in_flight(make_settings, server):
    """route() keeps eight routers; one evicted while another thread is still using it is
    closed only when that call ends."""
    import llm_router.router as router_module

    entered, release = threading.Event(), threading.Event()

    def held(_body):
        entered.set()
        release.wait(30)  # the call stays in flight until the evictions are done
        return Reply.answer("hep-th")

    server.default = held
    results = []
    first = threading.Thread(
        target=lambda: results.append(route("A paper", settings=make_settings(cache=False)))
    )
    first.start()
    assert entered.wait(30)
    server.default = lambda _b: Reply.answer("cs.CV")
    for i in range(router_module._ROUTERS_MAX + 1):  # evicts the first router
        route("Another paper", settings=make_settings(cache=False, max_input_chars=1000 + i))
    evicted = [r for r in router_module._retired.values()]
    assert len(evicted) == 1  # kept open for the call in flight
    release.set()
    first.join(30)
    assert [r.label for r in results] == ["hep-th"]
    assert router_module._retired == {}  # closed once the call ended
