"""Faults on the wire, on disk and in the budget: the router keeps answering, loses nothing
and leaks nothing."""

from __future__ import annotations

import gc
import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_router import Router
from llm_router.labels import LabelSet
from llm_router.llm.budget import Budget
from llm_router.llm.client import LLMClassifier
from llm_router.prompts import load_prompt
from llm_router.router import llm_classifier
from llm_router.testing import ChatServer, Reply
from tests.conftest import TEST_KEY
from tests.llm_router.helpers import FixedClassifier

LABELS = LabelSet.full_taxonomy()
CODES = LABELS.labels


def index_of(body) -> int:
    """Texts in these tests end in '[i]'; the scripted model answers CODES[i % n]."""
    content = body["messages"][1]["content"]
    return int(content.rsplit("[", 1)[1].split("]", 1)[0])


def expected(i: int) -> str:
    return CODES[i % len(CODES)]


class Flaky:
    """Every third request 503, every 17th a 429 with Retry-After, every 41st stalls 5 s."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self, body) -> Reply:
        with self.lock:
            self.n += 1
            n = self.n
        if n % 41 == 0:
            return Reply.answer(expected(index_of(body)), delay_s=5)
        if n % 17 == 0:
            return Reply.error(429, **{"Retry-After": "1"})
        if n % 3 == 0:
            return Reply.error(503)
        return Reply.answer(expected(index_of(body)))


def test_flaky_endpoint_loses_nothing_and_keeps_order(make_settings, server, shared_rows, caplog):
    server.default = Flaky()
    texts = [f"{row['abstract']} [{i}]" for i, row in enumerate(shared_rows[:200])]
    router = Router(
        [
            llm_classifier(make_settings(timeout_s=1, cache=False, breaker_threshold=50), LABELS),
            FixedClassifier("other"),
        ]
    )
    with caplog.at_level(logging.DEBUG):
        results = router.classify_many(texts, concurrency=16)
    assert len(results) == 200
    from_llm = [i for i, r in enumerate(results) if r.source == "llm"]
    assert all(results[i].label == expected(i) for i in from_llm)  # none swapped or duplicated
    assert all(r.fallback_reason for r in results if r.source != "llm")
    assert len(from_llm) >= 160  # without retries only ~2/3 would get through
    assert TEST_KEY not in caplog.text


def test_endpoint_disappearing_falls_back_fast_and_recovers(make_settings, tmp_path):
    server = ChatServer(default=lambda body: Reply.answer(expected(index_of(body)))).start()
    port = server.port
    settings = make_settings(
        base_url=server.url, cache=False, breaker_threshold=3, breaker_cooldown_s=1.0, timeout_s=2
    )
    router = Router([llm_classifier(settings, LABELS), FixedClassifier("other")])
    first = router.classify_many([f"text [{i}]" for i in range(10)], concurrency=4)
    assert {r.source for r in first} == {"llm"}
    server.stop()
    during = router.classify_many([f"text [{i}]" for i in range(10, 60)], concurrency=4)
    assert {r.source for r in during} == {"tfidf"}
    reasons = {r.fallback_reason for r in during}
    assert (
        reasons <= {"connection_error", "circuit_open", "http_502"}
        and "connection_error" in reasons
    )
    back = ChatServer(
        default=lambda body: Reply.answer(expected(index_of(body))), port=port
    ).start()
    try:
        time.sleep(1.2)  # the circuit breaker's cool-down
        after = router.classify(f"text [{61}]")
        assert (after.source, after.label) == ("llm", expected(61))
    finally:
        back.stop()


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    k=st.integers(min_value=0, max_value=12),
    concurrency=st.integers(min_value=1, max_value=32),
    failures=st.lists(st.sampled_from([200, 200, 503, 429, 500, "bad"]), min_size=1, max_size=8),
)
def test_budget_is_never_exceeded_under_concurrency(
    make_settings, server, k, concurrency, failures
):
    pattern = iter(failures * 100)
    lock = threading.Lock()

    def reply(body):
        with lock:
            kind = next(pattern, 200)
        if kind == 200:
            return Reply.answer("cs.CV")
        if kind == "bad":
            return Reply.answer("not-a-label")
        return Reply.error(kind)

    server.default = reply
    before = server.count
    budget = Budget(max_requests=k)
    with Router(
        [
            llm_classifier(make_settings(cache=False, breaker_threshold=1000), LABELS, budget),
            FixedClassifier(),
        ]
    ) as router:
        results = router.classify_many(
            [f"abstract number {i}" for i in range(40)], concurrency=concurrency
        )
    assert server.count - before <= k
    assert budget.requests == server.count - before
    assert len(results) == 40


def test_budget_holds_with_32_raw_threads():
    budget = Budget(max_requests=100, max_tokens=10_000)
    granted = []
    lock = threading.Lock()

    def worker():
        for _ in range(20):
            try:
                r = budget.reserve(150)
            except Exception:  # noqa: BLE001 - BudgetExceeded is the expected refusal
                continue
            budget.settle(r, 100, 20, None)
            with lock:
                granted.append(r)

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == budget.requests <= 100
    assert budget.tokens <= 10_000


CHILD = textwrap.dedent(
    """
    import json, os, sys
    from llm_router import Router, Settings
    from llm_router.labels import LabelSet
    from llm_router.router import llm_classifier
    labels = LabelSet.full_taxonomy()
    settings = Settings(api_key="k", base_url=sys.argv[1], cache_dir=sys.argv[2])
    router = Router([llm_classifier(settings, labels)])
    out = [router.classify(f"shared text [{i}]").label for i in range(int(sys.argv[3]))]
    print(json.dumps(out))
    """
)


def run_child(url, cache_dir, n, preexec=None):
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(cache_dir), str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec,
    )


def test_several_processes_share_one_cache_directory(server, tmp_path):
    server.default = lambda body: Reply.answer(expected(index_of(body)))
    children = [run_child(server.url, tmp_path / "cache", 25) for _ in range(4)]
    outputs = [c.communicate(timeout=120) for c in children]
    for (out, err), child in zip(outputs, children, strict=True):
        assert child.returncode == 0, err
        assert json.loads(out) == [expected(i) for i in range(25)]
    # Every entry written concurrently is intact: a fresh reader gets all 25 from the cache.
    fresh = run_child(server.url, tmp_path / "cache", 25)
    before = server.count
    out, err = fresh.communicate(timeout=120)
    assert json.loads(out) == [expected(i) for i in range(25)]
    assert server.count == before


def test_a_full_disk_does_not_break_route(server, tmp_path):
    """RLIMIT_FSIZE makes every write past a few KB fail, like a full disk or quota."""
    import resource
    import signal

    server.default = lambda body: Reply.answer(expected(index_of(body)))

    def tiny_quota():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    child = run_child(server.url, tmp_path / "cache", 20, preexec=tiny_quota)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert json.loads(out) == [expected(i) for i in range(20)]


def test_a_locked_cache_is_bypassed_not_waited_on(make_settings, server, tmp_path):
    server.default = lambda body: Reply.answer(expected(index_of(body)))
    router = Router([llm_classifier(make_settings(), LABELS)])
    router.classify("warm the cache [0]")
    db = sqlite3.connect(tmp_path / "cache" / "cache.db", timeout=0.1)
    db.execute("BEGIN EXCLUSIVE")  # another process holding the database
    try:
        results = [router.classify(f"locked out [{i}]") for i in range(1, 6)]
        assert [r.label for r in results] == [expected(i) for i in range(1, 6)]
    finally:
        db.rollback()
        db.close()


def test_ten_megabyte_input_is_truncated_and_answered(make_settings, server):
    router = Router(
        [llm_classifier(make_settings(max_input_chars=4000), LABELS)], max_input_chars=4000
    )
    result = router.classify("x" * 10_000_000 + " [3]")
    assert result.label in LABELS
    assert len(server.requests[0].body["messages"][1]["content"]) < 4500


def test_key_is_absent_from_every_file_and_message_of_a_faulty_run(
    make_settings, server, tmp_path, caplog
):
    server.default = Flaky()
    with caplog.at_level(logging.DEBUG):
        router = Router(
            [llm_classifier(make_settings(timeout_s=1, max_attempts=2), LABELS), FixedClassifier()]
        )
        results = router.classify_many([f"abstract [{i}]" for i in range(30)], concurrency=8)
    assert TEST_KEY not in caplog.text
    assert all(TEST_KEY not in r.model_dump_json() for r in results)
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            assert TEST_KEY.encode() not in path.read_bytes()
    assert os.environ.get("OPENROUTER_API_KEY") is None


def test_a_dropped_llm_client_closes_its_connection_pool(make_settings, server):
    """Garbage collection finalises a dropped client's pooled sockets in no set order; each
    one still open warns (an error in CI). The classifier closes its pool when it is
    collected, so a router dropped without ``close()`` leaks nothing."""
    server.default = lambda body: Reply.answer("cs.CV")
    llm = LLMClassifier(make_settings(cache=False), LABELS, load_prompt("classify/v1"))
    assert llm.classify("abstract number 1").label == "cs.CV"
    pool = llm._http()  # held here, so only the classifier's own finaliser can close it
    del llm
    gc.collect()
    assert pool.is_closed()


def test_a_closed_llm_client_reopens_and_still_closes_when_dropped(make_settings, server):
    server.default = lambda body: Reply.answer("cs.CV")
    llm = LLMClassifier(make_settings(cache=False), LABELS, load_prompt("classify/v1"))
    first = llm._http()
    llm.close()
    assert first.is_closed()
    assert llm.classify("abstract number 2").label == "cs.CV"
    second = llm._http()
    assert second is not first and not second.is_closed()
    del llm
    gc.collect()
    assert second.is_closed()
