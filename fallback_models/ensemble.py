"""EnsembleClassifier: the average of several local models' calibrated probabilities.

Offered as the ``ensemble`` fallback when both a BERT and a TF-IDF model are installed and
share a label set (``LLM_ROUTER_FALLBACKS=ensemble,tfidf``, say). It costs the slower
model's latency; BENCHMARKS.md says whether it is worth it on the shared data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from fallback_models.topk import TOP_K, classify_timed
from llm_router.labels import LabelSet
from llm_router.schemas import Classification


class Member(Protocol):
    name: str
    labels: LabelSet

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray: ...


class EnsembleClassifier:
    """Averages the members' probability vectors (equal weights unless given)."""

    name = "ensemble"

    def __init__(self, members: Sequence[Member], weights: Sequence[float] | None = None) -> None:
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two models")
        labels = members[0].labels
        if any(m.labels.labels != labels.labels for m in members[1:]):
            raise ValueError("the ensemble's models were trained on different label sets")
        w = np.asarray(weights if weights is not None else [1.0] * len(members), dtype=float)
        if len(w) != len(members) or (w < 0).any() or w.sum() <= 0:
            raise ValueError("one non-negative weight per model, not all zero")
        self.members = list(members)
        self.weights = w / w.sum()
        self.labels = labels

    @property
    def model_name(self) -> str:
        return "+".join(m.name for m in self.members)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        total = np.zeros((len(texts), len(self.labels)))
        for weight, member in zip(self.weights, self.members, strict=True):
            total += weight * member.predict_proba(texts)
        return total

    def classify_batch(self, texts: Sequence[str], top_k: int = TOP_K) -> list[Classification]:
        return classify_timed(
            self.predict_proba,
            texts,
            self.labels,
            source=self.name,
            model=self.model_name,
            top_k=top_k,
        )

    def classify(self, text: str) -> Classification:
        return self.classify_batch([text])[0]
