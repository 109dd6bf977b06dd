"""TF-IDF model trade-offs: features, heads, hidden width, epochs, calibration slice and
weight precision, and the default under two more training seeds (same split) for the spread.

Each configuration is trained on the training split that `python -m fallback_models train
tfidf` uses, evaluated on its test split, and saved to a temporary directory to measure the
artifact. Reports training seconds (featurising and both heads, data loading excluded),
artifact MB, top-1, top-5 and ECE.

Run: python bench/tfidf_tradeoffs.py [--out bench/results/tfidf_tradeoffs.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ABSTRACTS, emit  # noqa: E402
from fallback_models.tfidf import TfidfClassifier, TfidfConfig  # noqa: E402
from fallback_models.train import evaluate, prepare_dataset  # noqa: E402

DEFAULT = TfidfConfig()
VARIANTS: dict[str, TfidfConfig] = {
    "default (250k; regression + networks 192 and 128; 4-bit)": DEFAULT,
    "softmax regression alone": replace(DEFAULT, mlp_hidden=()),
    "regression + one network 256": replace(DEFAULT, mlp_hidden=(256,)),
    "150k features": replace(DEFAULT, max_features=150_000),
    "300k features": replace(DEFAULT, max_features=300_000),
    "fewer epochs (1 + 2)": replace(DEFAULT, linear_epochs=1, mlp_epochs=2),
    "more epochs (3 + 6)": replace(DEFAULT, linear_epochs=3, mlp_epochs=6),
    "calibration on 3 % of the rows": replace(DEFAULT, calibration_fraction=0.03),
    "int8 weights": replace(DEFAULT, weight_bits=8),
    "default, training seed 1": replace(DEFAULT, seed=1),
    "default, training seed 2": replace(DEFAULT, seed=2),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(ABSTRACTS))
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    ds = prepare_dataset(args.data)
    train_x, train_y = ds.texts(ds.train_idx), ds.y(ds.train_idx)
    test_x, test_y = ds.texts(ds.test_idx), ds.y(ds.test_idx)
    rows = []
    for name, config in VARIANTS.items():
        started = time.perf_counter()
        model = TfidfClassifier.train(train_x, train_y, ds.labels, config)
        train_s = time.perf_counter() - started
        m = evaluate(model, test_x, test_y)
        with tempfile.TemporaryDirectory() as tmp:
            model.save(Path(tmp) / "tfidf")
            size = sum(p.stat().st_size for p in (Path(tmp) / "tfidf").iterdir())
        row = {
            "variant": name,
            "train_seconds": round(train_s, 1),
            "artifact_mb": round(size / 1e6, 1),
            **{k: round(m[k], 4) for k in ("top1", "top5", "ece")},
            "batched_ms_per_abstract": round(m["inference_ms_per_text"], 3),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    emit("tfidf_tradeoffs", {"variants": rows})
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"variants": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
