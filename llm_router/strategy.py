"""Strategies: how much the router asks the LLM.

```
llm        text ─────────────────────────────── LLM(full label list)
shortlist  text ─ local model top-K ─────────── LLM(K labels, or "none" → full list once)
cascade    text ─ local model ─ p1 ≥ threshold? ─ yes: answer locally, send nothing
                                    └─ no ───── LLM(K labels)
```
Every strategy is the head of the same fallback chain: when the LLM cannot answer, the router
moves on to the local models as before. Each result says which strategy produced it
(``strategy``) and where it was decided (``decision``, a :class:`~llm_router.reasons.Decision`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, Protocol

from llm_router.classifier import Classifier
from llm_router.errors import ClassifierError
from llm_router.reasons import Decision
from llm_router.schemas import Classification

logger = logging.getLogger(__name__)

StrategyName = Literal["llm", "shortlist", "cascade"]
STRATEGIES: tuple[StrategyName, ...] = ("llm", "shortlist", "cascade")
_MIN_TOP_K = 5  # local models always give at least their top 5


class ShortlistLLM(Protocol):
    """An LLM link that can be offered a subset of the labels (LLMClassifier, its cache)."""

    name: str

    def classify(self, text: str, *, shortlist: Sequence[str] | None = None) -> Classification: ...


class StrategyClassifier:
    """The LLM link of a chain, used as ``strategy`` says.

    ``local`` are the local models in the router's order; the first that can answer proposes
    the shortlist (its top ``k``) and, for the cascade, decides confident rows itself.
    """

    def __init__(
        self,
        llm: ShortlistLLM,
        local: Sequence[Classifier],
        *,
        strategy: StrategyName = "llm",
        k: int = 8,
        threshold: float = 0.9,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
        self.llm = llm
        self.local = list(local)
        self.strategy: StrategyName = strategy
        self.k = k
        self.threshold = threshold
        self.name = llm.name
        self._warned_no_local = False

    @property
    def unavailable(self) -> ClassifierError | None:
        """The LLM link's standing error (no key, say) when this strategy needs the LLM for
        every text; a cascade can still answer confident texts locally."""
        error = getattr(self.llm, "unavailable", None)
        if isinstance(error, ClassifierError) and self.strategy != "cascade":
            return error
        return None

    def classify(self, text: str) -> Classification:
        if self.strategy == "llm":
            return self._stamp(self.llm.classify(text))
        proposal = self.propose(text)
        if proposal is None:  # no local model: the full list, and the result says so
            result = self.llm.classify(text)
            return self._stamp(result, Decision.LLM_NO_SHORTLIST)
        top = proposal.candidates
        if self.strategy == "cascade" and top and top[0].score >= self.threshold:
            return self._stamp(proposal, Decision.LOCAL_CONFIDENT)
        shortlist = [c.label for c in top[: self.k]]
        return self._stamp(self.llm.classify(text, shortlist=shortlist))

    def propose(self, text: str) -> Classification | None:
        """The first local model's ranking of at least ``k`` labels, or ``None``."""
        reasons = []
        for classifier in self.local:
            try:
                return _ranked(classifier, text, max(self.k, _MIN_TOP_K))
            except ClassifierError as exc:
                reasons.append(f"{classifier.name}: {exc.reason}")
        if not self._warned_no_local:
            self._warned_no_local = True
            logger.warning(
                "strategy %s: no local model can propose a shortlist (%s); the LLM gets the "
                "full label list (decision llm_no_shortlist)",
                self.strategy,
                ", ".join(reasons) or "none installed",
            )
        return None

    def _stamp(self, result: Classification, decision: Decision | None = None) -> Classification:
        update: dict[str, object] = {"strategy": self.strategy}
        if decision is not None:
            update["decision"] = decision
        return result.model_copy(update=update)

    def close(self) -> None:
        close = getattr(self.llm, "close", None)
        if callable(close):
            close()


def _ranked(classifier: Classifier, text: str, top_k: int) -> Classification:
    """``classifier``'s answer with its top ``top_k`` candidates (loading it if lazy)."""
    get = getattr(classifier, "get", None)
    model = get() if callable(get) else classifier
    batch = getattr(model, "classify_batch", None)
    if callable(batch):
        results: list[Classification] = batch([text], top_k=top_k)
        return results[0]
    result: Classification = model.classify(text)
    return result
