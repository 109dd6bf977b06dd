"""Reliability figures against the local scripted server (BENCHMARKS.md, "Reliability").

1. Flaky endpoint: every third request 503, every 17th a 429 with Retry-After: 1, every 41st
   stalls 5 s (timeout 1 s); classify_many of 200 real abstracts at concurrency 16.
2. Endpoint loss: 50 texts answered, the server stops, 100 more texts, the server comes back
   on the same port; time to answer the 100 from the fallback, and whether the LLM is used
   again after the circuit breaker's cool-down.
3. Budget: K=25 requests with 32 concurrent callers and 30% 503s; requests that arrived.
4. USD cap: $0.004 per call (reported in usage.cost), a $0.01 cap, 20 texts at concurrency 8,
   with no price and with a known price; requests sent and USD counted.
5. NaN cost: the first answer reports cost NaN, every later one $1, under a $0.01 cap.
6. Malformed bodies: five kinds of broken `usage` and three broken `choices`; what route()
   returns (it must never raise).
7. Retry-After: 3600 on one text; how long the next text (another thread) waits.
8. Dead endpoint: `python -m eval --n 10` on defaults (rpm 20, concurrency 4) against a
   port that refuses connections; wall time, requests spent, reasons (needs models/tfidf).

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
from llm_router.labels import LabelSet  # noqa: E402
from llm_router.llm.budget import Budget, Price  # noqa: E402
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


def _router(server: ChatServer, budget: Budget | None = None, **overrides: object) -> Router:
    values: dict[str, object] = {
        "api_key": "b",
        "base_url": server.url,
        "cache": False,
        "retry_max_wait_s": 0.05,
    }
    values.update(overrides)
    return Router([llm_classifier(Settings(**values), LABELS, budget), Local()])


def usd_cap() -> dict[str, object]:
    found: dict[str, object] = {}
    for name, price in (("unknown_price", None), ("known_price", Price(3.0, 3.0))):
        with ChatServer(default=lambda _b: Reply.answer("cs.CV", cost=0.004)) as server:
            b = Budget(max_cost_usd=0.01, price=price)
            _router(server, b).classify_many([f"text {i}" for i in range(20)], concurrency=8)
            found[name] = {"requests_sent": server.count, "usd_counted": round(b.cost_usd, 6)}
    return {"cap_usd": 0.01, "cost_per_call": 0.004, "concurrency": 8, **found}


def nan_cost() -> dict[str, object]:
    found: dict[str, object] = {}
    for name, price in (("unknown_price", None), ("known_price", Price(3.0, 3.0))):
        with ChatServer(default=lambda _b: Reply.answer("cs.CV", cost=1.0)) as server:
            server.script(Reply.answer("cs.CV", cost=float("nan")))
            b = Budget(max_cost_usd=0.01, price=price)
            _router(server, b).classify_many([f"text {i}" for i in range(5)], concurrency=1)
            found[name] = {"requests_sent": server.count, "usd_counted": round(b.cost_usd, 6)}
    return {"cap_usd": 0.01, **found}


def malformed() -> dict[str, object]:
    bodies: dict[str, object] = {
        "prompt_tokens_na": {"prompt_tokens": "n/a"},
        "usage_string": "oops",
        "usage_nested": {"prompt_tokens": {"n": 1}},
        "cost_string": {"cost": "free"},
        "usage_list": [1, 2],
    }
    found: dict[str, object] = {}
    with ChatServer() as server:
        router = _router(server, max_attempts=2)
        for name, usage in bodies.items():
            reply = Reply.answer("cs.CV")
            assert isinstance(reply.body, dict)
            reply.body["usage"] = usage
            server.default = lambda _b, r=reply: r  # type: ignore[misc]
            result = router.classify(f"text {name}")
            found[name] = f"{result.source}/{result.fallback_reason}"
        for name, raw in (("no_choices", {"choices": []}), ("choices_string", {"choices": "x"})):
            server.default = lambda _b, r=raw: Reply(body=r)  # type: ignore[misc]
            result = router.classify(f"text {name}")
            found[name] = f"{result.source}/{result.fallback_reason}"
    return found


def long_retry_after() -> dict[str, object]:
    with ChatServer(default=lambda _b: Reply.answer("cs.CV")) as server:
        server.script(Reply.error(429, **{"Retry-After": "3600"}))
        router = _router(server, retry_after_max_s=60)
        first = router.classify("text one")
        started = time.perf_counter()
        other = threading.Thread(target=router.classify, args=("text two",))
        other.start()
        other.join()
    return {
        "retry_after_s": 3600,
        "first_text": f"{first.source}/{first.fallback_reason}",
        "next_text_waited_s": round(time.perf_counter() - started, 2),
        "cap_s": 60,
    }


def dead_endpoint_eval() -> dict[str, object]:
    import json
    import os
    import subprocess
    import tempfile

    dead = ChatServer().start()
    url = dead.url
    dead.stop()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "LLM_ROUTER_BASE_URL": url,
            "LLM_ROUTER_API_KEY": "bench",
            "LLM_ROUTER_CACHE_DIR": str(Path(tmp) / "cache"),
        }
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "eval", "--n", "10", "--out", str(Path(tmp) / "run")],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            return {"error": done.stderr.strip().splitlines()[-1:]}
        report = json.loads((Path(tmp) / "run" / "report.json").read_text())
    return {
        "wall_s": round(wall, 1),
        "requests": report["budget"]["requests"],
        "llm_reasons": report["systems"]["llm"]["reasons"],
        "router_reasons": report["systems"]["router"]["reasons"],
        "breaker_cause": report["llm_link"]["breaker_cause"],
    }


def main() -> None:
    emit(
        "reliability",
        {
            "flaky": flaky(),
            "endpoint_loss": endpoint_loss(),
            "budget": budget(),
            "usd_cap": usd_cap(),
            "nan_cost": nan_cost(),
            "malformed_bodies": malformed(),
            "retry_after_3600": long_retry_after(),
            "dead_endpoint_eval": dead_endpoint_eval(),
        },
    )


if __name__ == "__main__":
    main()
