"""Turning a probability matrix into ranked Classifications (shared by the local models)."""

from __future__ import annotations

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
