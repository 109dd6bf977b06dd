"""Metrics with honest error bars (accuracy with a Wilson interval, top-k, F1, calibration
error), and the temperature scaling every local model's probabilities go through. Training
and the evaluation both score with these."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from llm_router.labels import LabelSet


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound for small n, unlike p ± 2·se)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def f1_scores(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, float]:
    """Per-class F1 over every class that occurs in the truth or the predictions."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for t, p in zip(y_true, y_pred, strict=True):
        if t == p:
            tp[t] += 1
        else:
            fp[p] += 1
            fn[t] += 1
    scores = {}
    for label in set(y_true) | set(y_pred):
        denom = 2 * tp[label] + fp[label] + fn[label]
        scores[label] = 2 * tp[label] / denom if denom else 0.0
    return scores


def macro_weighted_f1(y_true: Sequence[str], y_pred: Sequence[str]) -> tuple[float, float]:
    """Macro-F1 over the true classes, and F1 weighted by class support."""
    if not y_true:
        return (0.0, 0.0)
    per_class = f1_scores(y_true, y_pred)
    support = Counter(y_true)
    macro = float(np.mean([per_class[c] for c in support]))
    weighted = sum(per_class[c] * n for c, n in support.items()) / len(y_true)
    return macro, float(weighted)


def top_k_accuracy(y_true: Sequence[str], candidates: Sequence[Sequence[str]], k: int = 5) -> float:
    if not y_true:
        return 0.0
    hits = sum(t in list(c)[:k] for t, c in zip(y_true, candidates, strict=True))
    return hits / len(y_true)


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if values else None


def confused_pairs(
    y_true: Sequence[str], y_pred: Sequence[str], top: int = 10
) -> list[tuple[str, str, int]]:
    """The most frequent (true, predicted) mistakes."""
    pairs = Counter((t, p) for t, p in zip(y_true, y_pred, strict=True) if t != p)
    return [(t, p, n) for (t, p), n in pairs.most_common(top)]


def expected_calibration_error(
    confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray, bins: int = 10
) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width confidence
    bins weighted by their share of rows (bins ``(lo, hi]``, the first one ``[0, hi]``)."""
    conf = np.asarray(confidence, dtype=float)
    right = np.asarray(correct, dtype=float)
    if conf.size == 0:
        return 0.0
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(right[members].mean() - conf[members].mean())
    return float(total)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of a (rows, labels) array."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return result


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature that minimises the log loss of held-out logits."""
    from scipy.optimize import minimize_scalar

    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t))[rows, y].mean())

    result = minimize_scalar(nll, bounds=(np.log(1e-3), np.log(10.0)), method="bounded")
    return float(np.exp(result.x))


def score(
    proba: np.ndarray,
    labels: LabelSet,
    truth: Sequence[str],
    listed: Sequence[set[str]] | None = None,
) -> dict[str, Any]:
    """Top-1, top-5, macro/weighted F1, the calibration error of the top-1 probability, the
    worst classes and the most confused pairs; with ``listed`` (each row's listed categories)
    also the share of rows whose top-1 is one of them."""
    top = np.argsort(-proba, axis=1)[:, :5]
    names = labels.labels
    predicted = [names[row[0]] for row in top]
    candidates = [[names[i] for i in row] for row in top]
    macro, weighted = macro_weighted_f1(truth, predicted)
    correct = np.array([p == t for p, t in zip(predicted, truth, strict=True)])
    extra = {}
    if listed is not None:
        extra["top1_listed"] = float(
            np.mean([p in cats for p, cats in zip(predicted, listed, strict=True)])
        )
    per_class = f1_scores(truth, predicted)
    support = {label: truth.count(label) for label in set(truth)}
    worst = sorted(support, key=lambda c: (per_class[c], c))[:10]
    return {
        "test_rows": len(truth),
        "top1": float(correct.mean()),
        "top5": top_k_accuracy(truth, candidates, 5),
        **extra,
        "ece": expected_calibration_error(proba.max(axis=1), correct),
        "macro_f1": macro,
        "weighted_f1": weighted,
        "worst_classes": [
            {"label": c, "f1": round(per_class[c], 4), "support": support[c]} for c in worst
        ],
        "confused_pairs": [
            {"true": t, "predicted": p, "count": n} for t, p, n in confused_pairs(truth, predicted)
        ],
    }
