"""Turning a probability matrix into ranked Classifications (shared by the local models)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from llm_router.labels import LabelSet
from llm_router.schemas import Candidate, Classification

TOP_K = 5


def classifications(
    proba: np.ndarray,
    labels: LabelSet,
    *,
    source: str,
    model: str,
    latency_ms: float,
    top_k: int = TOP_K,
) -> list[Classification]:
    """One Classification per row of ``proba``: the ``top_k`` labels, best first."""
    k = min(top_k, proba.shape[1])
    top = np.argsort(-proba, axis=1)[:, :k]
    results = []
    for row, idx in zip(proba, top, strict=True):
        candidates = [Candidate(label=labels.labels[i], score=float(row[i])) for i in idx]
        results.append(
            Classification(
                label=candidates[0].label,
                source=source,
                candidates=candidates,
                latency_ms=latency_ms,
                model=model,
            )
        )
    return results


def classify_timed(
    predict_proba: Callable[[Sequence[str]], np.ndarray],
    texts: Sequence[str],
    labels: LabelSet,
    *,
    source: str,
    model: str,
    top_k: int = TOP_K,
) -> list[Classification]:
    """Run ``predict_proba`` on ``texts`` and rank the result; each Classification carries
    the batch's time per text."""
    started = time.perf_counter()
    proba = predict_proba(texts)
    per_text_ms = (time.perf_counter() - started) * 1000 / max(1, len(texts))
    return classifications(
        proba, labels, source=source, model=model, latency_ms=per_text_ms, top_k=top_k
    )
