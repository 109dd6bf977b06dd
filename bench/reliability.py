"""Reliability figures against the local scripted server (BENCHMARKS.md, "Reliability").

1. Flaky endpoint: every third request 503, every 17th a 429 with Retry-After: 1, every 41st
   stalls 5 s (timeout 1 s); classify_many of 200 real abstracts at concurrency 16.
2. Endpoint loss: 50 texts answered, the server stops, 100 more texts, the server comes back
   on the same port; time to answer the 100 from the fallback, and whether the LLM is used
   again after the circuit breaker's cool-down.
3. Budget: K=25 requests with 32 concurrent callers and 30% 503s; requests that arrived.

Run: python bench/reliability.py
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, real_abstracts  # noqa: E402
from llm_router import Candidate, Classification, Router, Settings  # noqa: E402
from llm_router.budget import Budget  # noqa: E402
from llm_router.labels import LabelSet  # noqa: E402
from llm_router.router import llm_classifier  # noqa: E402
from llm_router.testing import ChatServer, Reply  # noqa: E402

LABELS = LabelSet.full_taxonomy()


class Local:
    name = "tfidf"

    def classify(self, text: str) -> Classification:  # noqa: ARG002
        return Classification(
            label="other", source="tfidf", candidates=[Candidate(label="other", score=1)]
        )


def idx(body) -> int:  # type: ignore[no-untyped-def]
    return int(body["messages"][1]["content"].rsplit("[", 1)[1].split("]", 1)[0])


def answer(body) -> Reply:  # type: ignore[no-untyped-def]
    return Reply.answer(LABELS.labels[idx(body) % len(LABELS)])


def flaky() -> dict[str, object]:
    lock, count = threading.Lock(), [0]

    def reply(body):  # type: ignore[no-untyped-def]
        with lock:
            count[0] += 1
            n = count[0]
        if n % 41 == 0:
            return Reply.answer(LABELS.labels[idx(body) % len(LABELS)], delay_s=5)
        if n % 17 == 0:
            return Reply.error(429, **{"Retry-After": "1"})
        if n % 3 == 0:
            return Reply.error(503)
        return answer(body)

    texts = [f"{t} [{i}]" for i, t in enumerate(real_abstracts(200))]
    with ChatServer(default=reply) as server:
        settings = Settings(
            api_key="b", base_url=server.url, timeout_s=1, cache=False, breaker_threshold=50
        )
        router = Router([llm_classifier(settings, LABELS), Local()])
        t0 = time.perf_counter()
        results = router.classify_many(texts, concurrency=16)
        wall = time.perf_counter() - t0
    in_order = all(
        r.label == LABELS.labels[i % len(LABELS)]
        for i, r in enumerate(results)
        if r.source == "llm"
    )
    reasons: dict[str, int] = {}
    for r in results:
        if r.fallback_reason:
            reasons[r.fallback_reason] = reasons.get(r.fallback_reason, 0) + 1
    return {
        "texts": len(texts),
        "results": len(results),
        "from_llm": sum(r.source == "llm" for r in results),
        "llm_labels_all_correct_and_in_order": in_order,
        "requests": server.count,
        "fallback_reasons": reasons,
        "wall_s": round(wall, 2),
    }


def endpoint_loss() -> dict[str, object]:
    server = ChatServer(default=answer).start()
    port = server.port
    settings = Settings(
        api_key="b",
        base_url=server.url,
        cache=False,
        timeout_s=2,
        breaker_threshold=5,
        breaker_cooldown_s=2,
    )
    router = Router([llm_classifier(settings, LABELS), Local()])
    router.classify_many([f"t [{i}]" for i in range(50)], concurrency=8)
    server.stop()
    t0 = time.perf_counter()
    down = router.classify_many([f"t [{i}]" for i in range(50, 150)], concurrency=8)
    down_s = time.perf_counter() - t0
    back = ChatServer(default=answer, port=port).start()
    t0 = time.perf_counter()
    recovered = None
    while time.perf_counter() - t0 < 10:
        if router.classify(f"t [{int(1000 * time.perf_counter())}]").source == "llm":
            recovered = time.perf_counter() - t0
            break
        time.sleep(0.1)
    back.stop()
    return {
        "texts_while_down": len(down),
        "answered_by_fallback": sum(r.source == "tfidf" for r in down),
        "wall_s_while_down": round(down_s, 3),
        "llm_used_again_after_s": None if recovered is None else round(recovered, 2),
        "breaker_cooldown_s": settings.breaker_cooldown_s,
    }


def budget() -> dict[str, object]:
    lock, count = threading.Lock(), [0]

    def reply(_body):  # type: ignore[no-untyped-def]
        with lock:
            count[0] += 1
            n = count[0]
        return Reply.error(503) if n % 10 < 3 else Reply.answer("cs.CV")

    with ChatServer(default=reply) as server:
        b = Budget(max_requests=25)
        settings = Settings(
            api_key="b",
            base_url=server.url,
            cache=False,
            retry_max_wait_s=0.05,
            breaker_threshold=1000,
        )
        router = Router([llm_classifier(settings, LABELS, b), Local()])
        results = router.classify_many([f"text {i}" for i in range(200)], concurrency=32)
    return {
        "max_requests": 25,
        "callers": 32,
        "requests_arrived": server.count,
        "texts": len(results),
        "fell_back_for_budget": sum(r.fallback_reason == "budget" for r in results),
    }


def main() -> None:
    emit("reliability", {"flaky": flaky(), "endpoint_loss": endpoint_loss(), "budget": budget()})


if __name__ == "__main__":
    main()
