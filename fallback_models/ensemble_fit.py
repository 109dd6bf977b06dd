"""What ``train bert`` does beside the model itself: choose the held-out rows, measure speed,
and fit the BERT + TF-IDF ensemble against the TF-IDF model already in the model root.

The held-out rows are the TF-IDF model's calibration slice (its seeded share of the training
rows, which it did not fit on); BERT does not train on them either, so the ensemble's weight
and temperature are fitted on rows neither member has seen, never on the test split.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fallback_models.artifacts import MANIFEST, read_manifest, sha256_file
from fallback_models.ensemble import fit_pool, pool
from fallback_models.scoring import score
from llm_router.errors import ModelNotAvailable

if TYPE_CHECKING:
    from fallback_models.bert import BertClassifier
    from fallback_models.tfidf import TfidfClassifier
    from fallback_models.train import Dataset


@dataclass
class SiblingTfidf:
    """The TF-IDF model beside the BERT being trained, on the same data and split."""

    model: TfidfClassifier
    manifest: dict[str, Any]
    sha256: str  # of its manifest, which lists the sha256 of every file


def sibling_tfidf(dataset: Dataset, directory: Path) -> SiblingTfidf | None:
    """The TF-IDF model in ``directory`` when it was trained on this data and split."""
    from fallback_models.tfidf import TfidfClassifier

    try:
        manifest = read_manifest(directory, "tfidf")
    except ModelNotAvailable:
        return None
    mine = dataset.manifest_fields()
    same = (
        manifest.get("data", {}).get("sha256") == mine["data"]["sha256"]
        and manifest.get("split", {}).get("test_ids") == mine["split"]["test_ids"]
        and manifest.get("label_set") == dataset.labels.to_dict()
    )
    if not same:
        return None
    try:
        model = TfidfClassifier.load(directory)
    except ModelNotAvailable:
        return None
    return SiblingTfidf(model, manifest, sha256_file(directory / MANIFEST))


def held_out_rows(dataset: Dataset, tfidf: SiblingTfidf | None) -> tuple[list[int], list[int]]:
    """(rows to train on, rows to calibrate on): the TF-IDF model's calibration slice, with
    its config when there is one (else the default config's slice, which it would pick)."""
    from fallback_models.tfidf import TfidfConfig, calibration_rows

    config = TfidfConfig(seed=dataset.seed)
    if tfidf is not None:
        config = TfidfConfig(**tfidf.manifest["config"])
    train = dataset.train_idx
    mask = calibration_rows(len(train), config, dataset.published(train))
    return [train[i] for i in np.flatnonzero(~mask)], [train[i] for i in np.flatnonzero(mask)]


def speed(model: BertClassifier, texts: list[str], n: int = 256) -> dict[str, float]:
    """Inference speed without any cache: batched, and one text at a time (median)."""
    sample = texts[:n]
    started = time.perf_counter()
    model.predict_proba(sample)
    batched_s = time.perf_counter() - started
    singles = []
    for text in sample[:30]:
        started = time.perf_counter()
        model.predict_proba([text])
        singles.append(time.perf_counter() - started)
    return {
        "inference_ms_per_text": round(batched_s * 1000 / max(1, len(sample)), 3),
        "texts_per_second": round(len(sample) / batched_s, 1),
        "single_text_ms_median": round(statistics.median(singles) * 1000, 2),
    }


def fit_with_tfidf(
    bert: BertClassifier,
    tfidf: SiblingTfidf,
    dataset: Dataset,
    cal_idx: list[int],
    bert_test_log_proba: np.ndarray,
    cache_dir: Path | None,
) -> dict[str, Any]:
    """The ensemble's weights and temperature, fitted on the held-out rows, and its test
    metrics on the full test split (for the chain's order)."""
    labels = dataset.labels
    y_cal = np.array([labels.index(t) for t in dataset.y(cal_idx)])
    cal_texts = dataset.texts(cal_idx)
    bert_cal = bert.log_proba_cached(cal_texts, cache_dir)
    weight, temperature = fit_pool(bert_cal, tfidf.model.log_proba(cal_texts), y_cal)
    test = dataset.test_idx
    texts = dataset.texts(test)
    tfidf_test = tfidf.model.log_proba(texts)
    pooled = pool([bert_test_log_proba, tfidf_test], [weight, 1 - weight], temperature)
    metrics = score(np.exp(pooled), labels, dataset.y(test), dataset.listed(test))
    return {
        "tfidf_sha256": tfidf.sha256,
        "weights": {"bert": weight, "tfidf": round(1 - weight, 2)},
        "temperature": temperature,
        "fitted_on_rows": len(cal_idx),
        "metrics": metrics,
    }
