"""Each strategy against a real local model (llama.cpp's server), on the same held-out rows.

Runs ``python -m eval`` once per configuration, each with a cache of its own so that every
strategy pays for its own requests (the figures are per-strategy, never borrowed from another
strategy's cache), and collects the per-system figures of each report:
- ``llm``: the full label list;
- ``shortlist``: the TF-IDF top K, with the "none of these" answer that widens to the full
  list (``LLM_ROUTER_SHORTLIST_WIDEN=true``);
- ``shortlist_strict``: the same K, with no way out (the default);
- ``cascade``: local when the top-1 probability is ≥ the threshold, else the strict shortlist;
- ``tfidf``: the local model alone, on the same rows.

Start the server first (``LOCAL_LLM_MODEL=gemma3 scripts/local_llm.sh start 8766``), then:
python bench/local_llm_strategies.py --url http://127.0.0.1:8766/v1 --model gemma3 --n 200 \
    --out bench/results/local_llm_strategies.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = {
    "llm": ("llm,tfidf", {}),
    "shortlist": ("shortlist", {"LLM_ROUTER_SHORTLIST_WIDEN": "true"}),
    "shortlist_strict": ("shortlist", {"LLM_ROUTER_SHORTLIST_WIDEN": "false"}),
    "cascade": ("cascade", {}),
}
KEEP = (
    "rows",
    "accuracy",
    "accuracy_ci95",
    "group_accuracy",
    "listed_accuracy",
    "macro_f1",
    "llm_share",
    "requests",
    "requests_per_llm_row",
    "prompt_tokens_per_row",
    "completion_tokens_per_row",
    "shortlist_recall",
    "decisions",
    "reasons",
    "latency_ms_p50",
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    results: dict[str, object] = {"model": args.model, "n": args.n, "seed": args.seed, "runs": {}}
    work = Path(tempfile.mkdtemp(prefix="llm-strategies-"))
    for name in args.runs.split(","):
        systems, extra = RUNS[name]
        env = {
            **os.environ,
            "LLM_ROUTER_BASE_URL": args.url,
            "LLM_ROUTER_API_KEY": "local",
            "LLM_ROUTER_MODEL": args.model,
            "LLM_ROUTER_STRUCTURED_OUTPUT": "json_object",
            "LLM_ROUTER_TIMEOUT_S": "300",
            "LLM_ROUTER_CACHE_DIR": str(work / f"cache-{name}"),
            "LLM_ROUTER_FALLBACKS": "tfidf",
            **extra,
        }
        out = work / name
        command = [sys.executable, "-m", "eval", "--n", str(args.n), "--seed", str(args.seed)]
        command += ["--systems", systems, "--rpm", "60000", "--price-per-mtok", "0"]
        command += ["--concurrency", "1", "--max-requests", str(10 * args.n), "--out", str(out)]
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        report = json.loads((out / "report.json").read_text())
        for system, figures in report["systems"].items():
            label = name if system != "tfidf" else "tfidf"
            kept = {k: figures.get(k) for k in KEEP}
            results["runs"][label] = {**kept, "wall_s": round(wall, 1)}  # type: ignore[index]
        print(json.dumps({name: results["runs"][name]}), file=sys.stderr)  # type: ignore[index]
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
