"""Evaluation throughput: 200 rows through the LLM against a scripted server that takes
200 ms per request, --concurrency 16 --rpm 6000. Ideal wall time 200 x 0.2 / 16 = 2.5 s
(target <= 1.2 x ideal). Needs a trained model (its held-out ids are the sample pool).

Run: python bench/eval_throughput.py [--model-dir models] [--rows 200]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit  # noqa: E402
from eval.__main__ import main as eval_main  # noqa: E402
from llm_router.testing import ChatServer, fixed_label  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with (
        ChatServer(default=fixed_label("cs.LG", delay_s=args.delay)) as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        os.environ.update(
            LLM_ROUTER_MODEL_DIR=args.model_dir,
            LLM_ROUTER_BASE_URL=server.url,
            LLM_ROUTER_API_KEY="bench",
            LLM_ROUTER_CACHE_DIR=str(Path(tmp) / "cache"),
        )
        out = Path(tmp) / "run"
        code = eval_main(
            [
                "--n",
                str(args.rows),
                "--systems",
                "llm",
                "--rpm",
                "6000",
                "--concurrency",
                str(args.concurrency),
                "--max-requests",
                "1000",
                "--price-per-mtok",
                "0",
                "--out",
                str(out),
            ]
        )
        report = json.loads((out / "report.json").read_text())
    ideal = args.rows * args.delay / args.concurrency
    emit(
        "eval_throughput",
        {
            "exit_code": code,
            "rows": report["rows"],
            "requests": server.count,
            "answered_by_llm": report["systems"]["llm"]["answered"],
            "wall_s": report["wall_s"],
            "ideal_s": ideal,
            "wall_over_ideal": round(report["wall_s"] / ideal, 3),
            "target": "<= 1.2",
        },
    )


if __name__ == "__main__":
    main()
