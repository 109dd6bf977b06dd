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

Nothing lost (the commands as a user runs them; need models/tfidf):
9. A corpus job whose .jsonl has 3 malformed lines among 1,000 rows: exit code, rows written.
10. A re-run after an unanswerable run: the endpoint down (503) and no local model, then back.
11. Ctrl-C (to the process group) of a local-model job with 2 worker processes: rows kept,
    and the re-run's rows: every id once.
12. `train` interrupted (SIGINT) over an existing model: is the old model intact and loadable?
13. A service started before its model: /readyz before and after the model appears.

Run: python bench/reliability.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
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


MODELS = Path(__file__).resolve().parents[1] / "models"


def _rows(n: int) -> list[dict[str, object]]:
    return [{"id": f"r{i}", "abstract": text} for i, text in enumerate(real_abstracts(n))]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_router", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )


def _summary(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    lines = done.stdout.strip().splitlines()
    return dict(pair.split("=", 1) for pair in lines[-1].split()) if lines else {}


def bad_lines() -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        lines = [json.dumps(r) for r in _rows(1000)]
        lines[10:10] = ["{not json", "[1, 2]", "42"]
        source = Path(tmp) / "in.jsonl"
        source.write_text("\n".join(lines) + "\n")
        out = Path(tmp) / "out.jsonl"
        done = _cli(
            "classify", str(source), "-o", str(out), env={"LLM_ROUTER_MODEL_DIR": str(MODELS)}
        )
        return {
            "exit": done.returncode,
            "rows_written": len(out.read_text().splitlines()) if out.is_file() else 0,
            "failed_bad_line": _summary(done).get("failed_bad_line"),
            "line_numbers_logged": sum(f"line {n}:" in done.stderr for n in (11, 12, 13)),
        }


def rerun_after_unanswerable() -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp, ChatServer() as server:
        source = Path(tmp) / "in.jsonl"
        source.write_text("".join(json.dumps(r) + "\n" for r in _rows(30)))
        out = Path(tmp) / "out.jsonl"
        env = {
            "LLM_ROUTER_API_KEY": "bench",
            "LLM_ROUTER_BASE_URL": server.url,
            "LLM_ROUTER_MODEL_DIR": str(Path(tmp) / "none"),
            "LLM_ROUTER_CACHE": "off",
            "LLM_ROUTER_MAX_ATTEMPTS": "1",
        }
        server.default = lambda _body: Reply(status=503)
        down = _cli("classify", str(source), "-o", str(out), env=env)
        server.default = answer
        back = _cli("classify", str(source), "-o", str(out), env=env)
        ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
        return {
            "down": {"exit": down.returncode, "error": down.stderr.strip().splitlines()[-1]},
            "back": {
                "exit": back.returncode,
                **{k: _summary(back)[k] for k in ("classified", "failed")},
            },
            "rows_in_output": len(ids),
            "distinct_ids": len(set(ids)),
        }


def ctrl_c_with_workers() -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        rows = _rows(6000)
        source = Path(tmp) / "in.jsonl"
        source.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = Path(tmp) / "out.jsonl"
        env = {**os.environ, "LLM_ROUTER_MODEL_DIR": str(MODELS)}
        command = [sys.executable, "-m", "llm_router", "classify", str(source), "-o", str(out)]
        job = subprocess.Popen(
            [*command, "--chunk-size", "256", "--workers", "2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        while job.poll() is None and (not out.is_file() or out.read_bytes().count(b"\n") < 1500):
            time.sleep(0.05)
        os.killpg(job.pid, signal.SIGINT)
        stdout, _stderr = job.communicate(timeout=300)
        kept = len(out.read_text().splitlines())
        reported = _summary(subprocess.CompletedProcess([], 0, stdout, "")).get("classified")
        _cli("classify", str(source), "-o", str(out), env={"LLM_ROUTER_MODEL_DIR": str(MODELS)})
        ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
        return {
            "exit": job.returncode,
            "rows_kept": kept,
            "summary_classified": reported,
            "after_rerun": {"rows": len(ids), "distinct": len(set(ids)), "input": len(rows)},
        }


def train_interrupted() -> dict[str, object]:
    import shutil

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        shutil.copytree(MODELS / "tfidf", root / "tfidf")
        before = (root / "tfidf" / "manifest.json").read_bytes()
        data = Path(__file__).resolve().parents[2] / "shared" / "data" / "arxiv"
        job = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fallback_models",
                "train",
                "tfidf",
                "--out",
                str(root),
                "--data",
                str(data / "arxiv_abstracts.jsonl.gz"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        time.sleep(20)  # inside training (loading, featurising, the heads)
        job.send_signal(signal.SIGINT)
        _stdout, stderr = job.communicate(timeout=120)
        from fallback_models.tfidf import TfidfClassifier

        TfidfClassifier.load(root / "tfidf")  # raises if the old model was damaged
        return {
            "exit": job.returncode,
            "said": stderr.strip().splitlines()[-1],
            "old_model_unchanged": (root / "tfidf" / "manifest.json").read_bytes() == before,
            "old_model_loads": True,
            "left_in_root": sorted(p.name for p in root.iterdir()),
        }


def service_before_model() -> dict[str, object]:
    import shutil
    import socket

    import httpx

    with tempfile.TemporaryDirectory() as tmp, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        root = Path(tmp) / "models"
        env = {**os.environ, "LLM_ROUTER_MODEL_DIR": str(root), "LLM_ROUTER_MODEL_RETRY_S": "1"}
        server = subprocess.Popen(
            [sys.executable, "-m", "llm_router", "serve", "--port", str(port), "--no-ui"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    before = httpx.get(f"{base}/readyz").status_code
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            shutil.copytree(MODELS / "tfidf", root / "tfidf")
            appeared = time.perf_counter()
            while httpx.get(f"{base}/readyz").status_code != 200:
                time.sleep(0.1)
            ready_after = time.perf_counter() - appeared
            answer = httpx.post(f"{base}/v1/classify", json={"text": real_abstracts(1)[0]})
        finally:
            server.terminate()
            server.wait(30)
        return {
            "readyz_before": before,
            "ready_after_model_s": round(ready_after, 2),
            "classify_after": answer.status_code,
            "source": answer.json().get("source"),
        }


def main() -> None:
    emit(
        "reliability",
        {
            "corpus_bad_lines": bad_lines(),
            "corpus_rerun_after_unanswerable": rerun_after_unanswerable(),
            "corpus_ctrl_c_with_workers": ctrl_c_with_workers(),
            "train_interrupted_over_a_model": train_interrupted(),
            "service_started_before_its_model": service_before_model(),
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
