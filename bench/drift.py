"""Does the TF-IDF model stay accurate and calibrated on papers newer than its training data?

Trains the model on two splits of the shared data and evaluates each on its held-out rows:
- ``random``: the seeded 90/10 split by label that `python -m fallback_models train` uses;
- ``temporal``: train on papers published before the cutoff (2026-03-01), test on those
  published on or after it (rows without a date are left out).
For each split it tries both calibration slices (the temperatures fitted on a random 1 % of
the training rows, or on the latest-published 1 %: ``calibration_fraction``) and reports
top-1, top-5, the share of rows whose top-1 is one of the paper's listed categories, and the
expected calibration error of the top-1 probability (10 bins).

Run: python bench/drift.py [--out bench/results/drift.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ABSTRACTS, emit  # noqa: E402
from fallback_models.tfidf import TfidfClassifier, TfidfConfig  # noqa: E402
from fallback_models.train import TEMPORAL_CUTOFF, evaluate, prepare_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(ABSTRACTS))
    parser.add_argument("--cutoff", default=TEMPORAL_CUTOFF)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    results: dict[str, object] = {"cutoff": args.cutoff, "runs": []}
    for split in ("random", "temporal"):
        ds = prepare_dataset(args.data, split=split, cutoff=args.cutoff)
        train, test = ds.train_idx, ds.test_idx
        for calibration in ("random", "latest"):
            config = replace(TfidfConfig(), calibration=calibration)
            started = time.perf_counter()
            model = TfidfClassifier.train(
                ds.texts(train),
                ds.y(train),
                ds.labels,
                config,
                published=ds.published(train),
            )
            train_s = time.perf_counter() - started
            m = evaluate(model, ds.texts(test), ds.y(test), listed=ds.listed(test))
            run = {
                "split": split,
                "calibration": calibration,
                "train_rows": len(train),
                "test_rows": len(test),
                "train_seconds": round(train_s, 1),
                **{k: round(m[k], 4) for k in ("top1", "top5", "top1_listed", "ece")},
                "temperatures": [round(t, 3) for t in model.temperatures],
            }
            results["runs"].append(run)  # type: ignore[attr-defined]
            print(json.dumps(run), file=sys.stderr)
    emit("drift", results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
