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


class RankedClassifier:
    """A local model with a fixed ranking: ``scores`` best first; counts its calls."""

    def __init__(self, scores: dict[str, float], name: str = "tfidf") -> None:
        self.scores = dict(sorted(scores.items(), key=lambda kv: -kv[1]))
        self.name = name
        self.calls = 0

    def classify_batch(self, texts: list[str], top_k: int = 5) -> list[Classification]:
        self.calls += len(texts)
        top = [Candidate(label=k, score=v) for k, v in list(self.scores.items())[:top_k]]
        return [Classification(label=top[0].label, source=self.name, candidates=top) for _ in texts]

    def classify(self, text: str) -> Classification:
        return self.classify_batch([text])[0]
