"""Fallback accuracy on the shared data, notebook protocol, next to the notebook's pipeline.

Protocol: labels balanced over the whole file (< 100 rows -> archive -> other), a seeded 10%
stratified test split (the same one `python -m fallback_models train` saves). In one run:
the notebook's TF-IDF(stop_words="english", max_features=10000) + one-vs-rest logistic
regression, and our `tfidf` model (training time, top-1/top-5/macro-F1, inference time per
abstract one at a time and batched). BERT and the ensemble, next to TF-IDF, are measured by
``bench/local_models.py``.

Single-text latency is measured twice: the model's own ``classify`` and the whole
``Router.classify`` path (no API key, so the router answers from the local model at once).

Run: python bench/fallback_accuracy.py [--out bench/results/fallback.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench._common import ABSTRACTS, emit  # noqa: E402
from fallback_models.tfidf import TfidfClassifier  # noqa: E402
from fallback_models.train import evaluate, prepare_dataset  # noqa: E402
from llm_router import Router, Settings  # noqa: E402


class NotebookPipeline:
    """The seed notebook's model: TF-IDF (10k features, English stop words) + OvR LR."""

    def __init__(self, labels):  # type: ignore[no-untyped-def]
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier

        self.labels = labels
        self.vec = TfidfVectorizer(stop_words="english", max_features=10000)
        self.clf = OneVsRestClassifier(LogisticRegression(max_iter=1000), n_jobs=2)

    def fit(self, texts, targets):  # type: ignore[no-untyped-def]
        y = np.array([self.labels.index(t) for t in targets])
        self.clf.fit(self.vec.fit_transform(texts), y)
        return self

    def predict_proba(self, texts):  # type: ignore[no-untyped-def]
        proba = np.zeros((len(texts), len(self.labels)))
        proba[:, self.clf.classes_] = self.clf.predict_proba(self.vec.transform(texts))
        return proba


def _single_ms(classify: Callable[[str], object], texts: list[str]) -> float:
    """Median milliseconds of one call, over 500 texts after 20 warm-up calls."""
    for text in texts[:20]:
        classify(text)
    samples = []
    for text in texts[:500]:
        s0 = time.perf_counter()
        classify(text)
        samples.append(time.perf_counter() - s0)
    return round(float(np.median(samples)) * 1000, 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(ABSTRACTS))
    parser.add_argument("--skip-notebook", action="store_true")
    parser.add_argument(
        "--tfidf-dir", type=Path, help="evaluate this trained tfidf model instead of training one"
    )
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    t0 = time.perf_counter()
    ds = prepare_dataset(args.data)
    print(
        f"data: {len(ds.papers)} rows, {len(ds.labels)} labels, {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    train_x, train_y = ds.texts(ds.train_idx), ds.y(ds.train_idx)
    test_x, test_y = ds.texts(ds.test_idx), ds.y(ds.test_idx)
    listed = ds.listed(ds.test_idx)
    results: dict[str, object] = {
        "rows": len(ds.papers),
        "labels": len(ds.labels),
        "train_rows": len(train_x),
        "test_rows": len(test_x),
    }

    if not args.skip_notebook:
        t0 = time.perf_counter()
        notebook = NotebookPipeline(ds.labels).fit(train_x, train_y)
        train_s = time.perf_counter() - t0
        m = evaluate(notebook, test_x, test_y)
        results["notebook_tfidf_lr"] = {
            "train_seconds": round(train_s, 1),
            **{k: m[k] for k in ("top1", "top5", "macro_f1", "weighted_f1")},
        }
        print(f"notebook: {results['notebook_tfidf_lr']}", file=sys.stderr)

    if args.tfidf_dir:
        model = TfidfClassifier.load(args.tfidf_dir)
        manifest = json.loads((args.tfidf_dir / "manifest.json").read_text())
        train_s = manifest["metrics"]["train_seconds"]
    else:
        t0 = time.perf_counter()
        model = TfidfClassifier.train(
            train_x, train_y, ds.labels, progress=lambda s: print(s, file=sys.stderr)
        )
        train_s = time.perf_counter() - t0
    m = evaluate(model, test_x, test_y, listed=listed)
    single = _single_ms(model.classify, test_x)
    with tempfile.TemporaryDirectory() as root:
        if args.tfidf_dir:
            shutil.copytree(args.tfidf_dir, Path(root) / "tfidf")
        else:
            model.save(Path(root) / "tfidf", **ds.manifest_fields(), metrics=m)
        settings = Settings(model_dir=Path(root), fallbacks="tfidf", cache=False, api_key="")
        router = Router.from_settings(settings)
        routed = _single_ms(router.classify, test_x)
    results["tfidf"] = {
        "train_seconds": round(train_s, 1),
        **{k: m[k] for k in ("top1", "top5", "top1_listed", "macro_f1", "weighted_f1", "ece")},
        "batched_ms_per_abstract": round(m["inference_ms_per_text"], 4),
        "single_ms_per_abstract_median": single,
        "router_classify_ms_median": routed,
        "worst_classes": m["worst_classes"],
        "confused_pairs": m["confused_pairs"],
    }
    print(f"tfidf: top1 {m['top1']:.4f} top5 {m['top5']:.4f}", file=sys.stderr)

    emit("fallback_accuracy", results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
