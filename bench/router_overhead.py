"""Router overhead against the local scripted server (issue: router targets).

- cache miss: median latency of ``Router.classify`` (validation, prompt, cache lookup and
  store, HTTP call, parsing) over that of a bare ``openai`` client call with the same
  messages to the same server (target <= 1.10);
- cache hit: median latency of ``Router.classify`` when the answer is cached (target < 1 ms);
- ``classify_many`` at concurrency 16 against a server taking 100 ms per request, as a
  fraction of the ideal 160 requests/s (target >= 0.85).

Run: python bench/router_overhead.py [--n 300]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openai  # noqa: E402

from bench._common import emit, median_ms, real_abstracts  # noqa: E402
from llm_router import Router, Settings  # noqa: E402
from llm_router.labels import LabelSet  # noqa: E402
from llm_router.prompts import load_prompt  # noqa: E402
from llm_router.router import llm_classifier  # noqa: E402
from llm_router.testing import ChatServer, fixed_label  # noqa: E402

# The server runs in another process; the throughput part uses 16 client threads.


def _serve(delay_s: float, port_out: mp.Queue, stop: mp.Event) -> None:  # type: ignore[type-arg]
    with ChatServer(default=fixed_label("cs.CV", delay_s=delay_s)) as server:
        port_out.put(server.port)
        stop.wait()


class ServerProcess:
    """The scripted server in its own process, as a remote endpoint would be: the client's
    CPU time is then not shared with the server's under one GIL."""

    def __init__(self, delay_s: float) -> None:
        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        ports: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
        self.proc = ctx.Process(target=_serve, args=(delay_s, ports, self.stop), daemon=True)
        self.proc.start()
        self.url = f"http://127.0.0.1:{ports.get(timeout=60)}/v1"

    def close(self) -> None:
        self.stop.set()
        self.proc.join(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300, help="calls per measurement")
    parser.add_argument("--many", type=int, default=480, help="texts for classify_many")
    args = parser.parse_args()
    texts = real_abstracts(args.n + args.many)
    labels = LabelSet.full_taxonomy()
    prompt = load_prompt("classify/v1")
    server = ServerProcess(delay_s=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(api_key="bench", base_url=server.url, cache_dir=Path(tmp) / "cache")
        router = Router([llm_classifier(settings, labels)])
        llm = router.classifiers[0].inner  # the LLMClassifier inside the cache wrapper
        bare = openai.OpenAI(base_url=server.url, api_key="bench", max_retries=0)
        system = prompt.system(labels)

        def bare_call(text: str) -> None:
            bare.chat.completions.create(
                model=settings.model,
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": prompt.user(text)},
                ],
                temperature=0.0,
                max_tokens=settings.max_completion_tokens,
                response_format=llm._response_format,  # type: ignore[arg-type]
            )

        for text in texts[:20]:  # warm up connections and code paths
            bare_call(text)
            router.classify(text + " warm")
        bare_s, miss_s, hit_s = [], [], []
        # Interleave the two so drift on a busy machine hits both alike.
        for text in texts[: args.n]:
            t0 = time.perf_counter()
            bare_call(text)
            t1 = time.perf_counter()
            router.classify(text)
            t2 = time.perf_counter()
            bare_s.append(t1 - t0)
            miss_s.append(t2 - t1)
        for text in texts[: args.n]:
            t0 = time.perf_counter()
            result = router.classify(text)
            hit_s.append(time.perf_counter() - t0)
            assert result.cached
        server.close()

        # Throughput: 100 ms per request, 16 in flight, no cache, no rate limit.
        slow = ServerProcess(delay_s=0.1)
        try:
            many_settings = Settings(api_key="bench", base_url=slow.url, cache=False)
            many_router = Router([llm_classifier(many_settings, labels)])
            many_router.classify_many(texts[:32], concurrency=16)  # warm-up
            batch = texts[args.n : args.n + args.many]
            t0 = time.perf_counter()
            results = many_router.classify_many(batch, concurrency=16)
            many_s = time.perf_counter() - t0
            assert all(r.source == "llm" for r in results)
        finally:
            slow.close()
    ratio = median_ms(miss_s) / median_ms(bare_s)
    rps = len(batch) / many_s
    emit(
        "router_overhead",
        {
            "calls": args.n,
            "bare_openai_median_ms": round(median_ms(bare_s), 3),
            "route_cache_miss_median_ms": round(median_ms(miss_s), 3),
            "miss_over_bare": round(ratio, 3),
            "route_cache_hit_median_ms": round(median_ms(hit_s), 3),
            "classify_many_texts": len(batch),
            "classify_many_rps": round(rps, 1),
            "classify_many_fraction_of_ideal_160": round(rps / 160, 3),
            "targets": {"miss_over_bare": "<= 1.10", "hit_ms": "< 1", "fraction": ">= 0.85"},
        },
    )


if __name__ == "__main__":
    main()
