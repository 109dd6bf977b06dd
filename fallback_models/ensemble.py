"""EnsembleClassifier: the weighted average of local models' calibrated log-probabilities.

``log p = softmax((w_1 log p_1 + ... + w_n log p_n) / T)``: a log-linear pool. The weights
and the temperature ``T`` are fitted on held-out training rows (never the test split) when
the BERT model is trained beside a TF-IDF model (:func:`fit_pool`), and stored in the BERT
manifest with the TF-IDF manifest's sha256 they were fitted against; the registry applies
them only to that TF-IDF model. It costs the slower model's latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from fallback_models.scoring import fit_temperature, log_softmax
from fallback_models.topk import TOP_K, classify_timed
from llm_router.labels import LabelSet
from llm_router.schemas import Classification

WEIGHT_GRID = np.round(np.linspace(0.0, 1.0, 21), 2)


class Member(Protocol):
    name: str
    labels: LabelSet

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray: ...


def log_proba_of(member: Member, texts: Sequence[str]) -> np.ndarray:
    """A member's calibrated log-probabilities (its own ``log_proba`` when it has one)."""
    own = getattr(member, "log_proba", None)
    if callable(own):
        result: np.ndarray = own(texts)
        return result
    clipped: np.ndarray = np.log(np.clip(member.predict_proba(texts), 1e-12, None))
    return clipped


def pool(
    log_probas: Sequence[np.ndarray], weights: Sequence[float], temperature: float
) -> np.ndarray:
    """The pooled log-probabilities of members' log-probability matrices."""
    mixed = np.zeros_like(log_probas[0])
    for weight, log_proba in zip(weights, log_probas, strict=True):
        mixed += weight * log_proba
    return log_softmax(mixed / temperature)


def fit_pool(first: np.ndarray, second: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The weight of ``first`` (the other gets 1 - w) and the temperature that minimise the
    log loss of two members' held-out log-probabilities, on a 0.05 grid of weights."""
    rows = np.arange(len(y))
    best: tuple[float, float, float] | None = None
    for w in WEIGHT_GRID:
        mixed = w * first + (1 - w) * second
        temperature = fit_temperature(mixed, y)
        loss = float(-log_softmax(mixed / temperature)[rows, y].mean())
        if best is None or loss < best[0]:
            best = (loss, float(w), temperature)
    assert best is not None
    return best[1], best[2]


class EnsembleClassifier:
    """Pools the members' log-probabilities with fitted weights and a temperature."""

    name = "ensemble"

    def __init__(
        self,
        members: Sequence[Member],
        weights: Sequence[float] | None = None,
        temperature: float = 1.0,
    ) -> None:
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two models")
        labels = members[0].labels
        if any(m.labels.labels != labels.labels for m in members[1:]):
            raise ValueError("the ensemble's models were trained on different label sets")
        w = np.asarray(weights if weights is not None else [1.0] * len(members), dtype=float)
        if len(w) != len(members) or (w < 0).any() or w.sum() <= 0:
            raise ValueError("one non-negative weight per model, not all zero")
        if not temperature > 0:
            raise ValueError(f"the temperature must be positive, got {temperature}")
        self.members = list(members)
        self.weights = w / w.sum()
        self.temperature = temperature
        self.labels = labels

    @property
    def model_name(self) -> str:
        return "+".join(m.name for m in self.members)

    def log_proba(self, texts: Sequence[str]) -> np.ndarray:
        return pool([log_proba_of(m, texts) for m in self.members], self.weights, self.temperature)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        proba: np.ndarray = np.exp(self.log_proba(texts))
        return proba

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
