"""The service under load, with the local model answering (no key).

Starts ``python -m llm_router serve --no-ui`` in its own process, then for concurrency 1, 16
and 64 sends ``--n`` real abstracts as ``POST /v1/classify`` (each client keeps one bare
keep-alive HTTP/1.1 connection) and reports requests/s, p50/p99 latency, and the ratio of
requests/s to in-process ``Router.classify_many`` on the same texts at the same concurrency.
Also the server's peak resident memory (``VmHWM``) and that every answer matched the in-process one.

Run: python bench/serve_load.py --out bench/results/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, real_abstracts, save  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def load(
    port: int, texts: list[str], concurrency: int
) -> tuple[float, list[float], list[str]]:
    """``concurrency`` keep-alive clients, each a bare HTTP/1.1 connection: a client as light
    as can be, so that on 2 cores the load generator takes little from the server."""
    queue = list(enumerate(texts))
    latencies: list[float] = []
    labels: list[str] = [""] * len(texts)

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                i, text = queue.pop()
                body = json.dumps({"text": text}).encode()
                head = (
                    f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                )
                started = time.perf_counter()
                writer.write(head.encode() + body)
                await writer.drain()
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                payload = await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                ok = status_line.split()[1] == b"200"
                labels[i] = json.loads(payload)["label"] if ok else status_line.decode().strip()
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, labels


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from llm_router import Router, Settings

    texts = real_abstracts(args.n)
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENROUTER_API_KEY", "LLM_ROUTER_API_KEY")
    }
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "llm_router", "serve", "--port", str(port), "--no-ui"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        router = Router.from_settings(Settings(api_key=None))
        expected = [c.label for c in router.classify_many(texts, concurrency=1)]
        asyncio.run(load(port, texts[:200], 16))  # warm up
        runs = []
        for concurrency in (1, 16, 64):
            wall, latencies, labels = asyncio.run(load(port, texts, concurrency))
            started = time.perf_counter()
            router.classify_many(texts, concurrency=concurrency)
            in_process = len(texts) / (time.perf_counter() - started)
            served = len(texts) / wall
            runs.append(
                {
                    "concurrency": concurrency,
                    "requests_per_s": round(served, 1),
                    "p50_ms": round(1000 * quantile(latencies, 0.5), 2),
                    "p99_ms": round(1000 * quantile(latencies, 0.99), 2),
                    "in_process_per_s": round(in_process, 1),
                    "ratio_to_in_process": round(served / in_process, 3),
                    "all_answers_match": labels == expected,
                }
            )
            print(json.dumps(runs[-1]), file=sys.stderr)
        status = Path(f"/proc/{server.pid}/status").read_text()
        peak_kb = int(
            next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    results = {"n": len(texts), "runs": runs, "server_peak_rss_mb": round(peak_kb / 1024)}
    emit("serve_load", results)
    save(results, args.out)


if __name__ == "__main__":
    main()
