"""Small classifiers built in tests, to exercise the chain without trained models."""

from __future__ import annotations

from llm_router import Candidate, Classification
from llm_router.errors import ModelNotAvailable


class FixedClassifier:
    """Always answers one label; counts its calls."""

    def __init__(self, label: str = "math.AP", name: str = "tfidf") -> None:
        self.label = label
        self.name = name
        self.calls = 0

    def classify(self, text: str) -> Classification:
        self.calls += 1
        return Classification(
            label=self.label,
            source=self.name,
            candidates=[Candidate(label=self.label, score=1.0)],
        )


class MissingClassifier:
    """A fallback whose artifacts are missing."""

    def __init__(self, name: str = "bert") -> None:
        self.name = name

    def classify(self, text: str) -> Classification:
        raise ModelNotAvailable("no artifacts", classifier=self.name, reason="missing_artifacts")
