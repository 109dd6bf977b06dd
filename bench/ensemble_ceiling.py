"""How far can pooling BERT with TF-IDF go? The ensemble's top-1 on the full test split for
every weight of the grid, beside the weight ``train bert`` fitted on held-out rows.

The best weight here is chosen *on the test split*: an upper bound on what any choice of the
pool's weight could give these two models, not a result a user gets. Run it on a model root
where both were trained on the same data and split (for instance the one
``bench/local_models.py --root ROOT`` leaves):

    python bench/ensemble_ceiling.py --root ROOT [--cache-dir DIR] --out FILE.json

``--cache-dir``: the embedding cache ``train bert`` was given, so that the test rows are not
embedded again (about 8 minutes on 2 cores otherwise).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, save  # noqa: E402
from fallback_models.artifacts import read_manifest  # noqa: E402
from fallback_models.bert import BertClassifier  # noqa: E402
from fallback_models.ensemble import WEIGHT_GRID, pool  # noqa: E402
from fallback_models.ensemble_fit import held_out_rows, sibling_tfidf  # noqa: E402
from fallback_models.scoring import expected_calibration_error, fit_temperature  # noqa: E402
from fallback_models.train import prepare_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="model root: tfidf/ and bert/")
    parser.add_argument("--cache-dir", type=Path, help="the embedding cache of train bert")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    manifest = read_manifest(args.root / "bert", "bert")
    split = manifest["split"]
    dataset = prepare_dataset(
        manifest["data"]["source"],
        seed=split.get("seed", 42),
        test_fraction=split.get("test_fraction", 0.1),
        split=split.get("kind", "random"),
        **({"cutoff": split["cutoff"]} if split.get("cutoff") else {}),
    )
    tfidf = sibling_tfidf(dataset, args.root / "tfidf")
    if tfidf is None:
        raise SystemExit(f"{args.root / 'tfidf'}: no TF-IDF model on this data and split")
    bert = BertClassifier.load(args.root / "bert")
    _, cal_idx = held_out_rows(dataset, tfidf)
    labels = dataset.labels
    y_cal = np.array([labels.index(t) for t in dataset.y(cal_idx)])
    y_test = np.array([labels.index(t) for t in dataset.y(dataset.test_idx)])
    cal_texts, test_texts = dataset.texts(cal_idx), dataset.texts(dataset.test_idx)
    bert_cal = bert.log_proba_cached(cal_texts, args.cache_dir)
    bert_test = bert.log_proba_cached(test_texts, args.cache_dir)
    tfidf_cal, tfidf_test = tfidf.model.log_proba(cal_texts), tfidf.model.log_proba(test_texts)

    def top1(log_proba: np.ndarray) -> float:
        return round(float((log_proba.argmax(axis=1) == y_test).mean()), 4)

    grid = []
    for weight in WEIGHT_GRID:
        temperature = fit_temperature(weight * bert_cal + (1 - weight) * tfidf_cal, y_cal)
        pooled = pool([bert_test, tfidf_test], [weight, 1 - weight], temperature)
        proba = np.exp(pooled)
        ece = expected_calibration_error(proba.max(axis=1), proba.argmax(axis=1) == y_test)
        grid.append({"bert_weight": float(weight), "top1": top1(pooled), "ece": round(ece, 4)})
    best = max(grid, key=lambda row: row["top1"])
    fitted = manifest.get("ensemble", {})
    results = {
        "root": str(args.root),
        "test_rows": len(y_test),
        "held_out_rows": len(y_cal),
        "tfidf_top1": top1(tfidf_test),
        "bert_top1": top1(bert_test),
        "fitted": {
            "bert_weight": fitted.get("weights", {}).get("bert"),
            "top1": round(fitted.get("metrics", {}).get("top1", float("nan")), 4),
        },
        "best_weight_on_the_test_split": best,
        "gain_at_best_points": round(100 * (best["top1"] - top1(tfidf_test)), 2),
        "grid": grid,
    }
    emit("ensemble_ceiling", results)
    save(results, args.out)


if __name__ == "__main__":
    main()
