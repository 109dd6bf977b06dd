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

With a calibration profile for the setup (:mod:`llm_router.voter`), the LLM's answer is
combined with the local model's distribution instead of replacing it, and every answer's
``confidence`` is calibrated; without one, the LLM's answer wins with the default confidence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, Protocol

from llm_router.classifier import Classifier
from llm_router.errors import ClassifierError
from llm_router.reasons import Decision
from llm_router.schemas import DEFAULT_LLM_CONFIDENCE, Candidate, Classification, LLMAnswer
from llm_router.voter import LOCAL_TOP_K, Calibration, Profile, followed

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
    ``calibration`` finds the profile that combines the LLM's answer with that model's
    distribution (``combine=False``: the LLM alone, with its calibrated confidence, as the
    evaluation measures it); ``n_labels`` is the size of the deployed label set.
    """

    def __init__(
        self,
        llm: ShortlistLLM,
        local: Sequence[Classifier],
        *,
        strategy: StrategyName = "llm",
        k: int = 8,
        threshold: float = 0.9,
        calibration: Calibration | None = None,
        n_labels: int | None = None,
        combine: bool = True,
        threshold_fixed: bool = True,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
        self.llm = llm
        self.local = list(local)
        self.strategy: StrategyName = strategy
        self.k = k
        self.threshold = threshold
        self.calibration = calibration
        self.n_labels = n_labels
        self.combine = combine
        # False: a matching profile's fitted cascade threshold replaces ``threshold``.
        self.threshold_fixed = threshold_fixed
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
        profile = None  # none to look for (nor to warn of) when the LLM cannot be asked
        if self.calibration is not None and self.unavailable is None:
            profile = self._profile(self._local_model())
        proposal = None
        if self.strategy != "llm" or profile is not None:
            proposal = self.propose(text)
        if self.strategy != "llm" and proposal is None:  # no local model: the full list
            result = self.llm.classify(text)
            return self._stamp(self._vote(result, None, None), Decision.LLM_NO_SHORTLIST)
        if self.strategy == "cascade" and proposal is not None:
            top = proposal.candidates
            threshold = self.threshold
            fitted = profile.cascade_threshold if profile is not None else None
            if fitted is not None and not self.threshold_fixed:
                threshold = fitted
            if top and top[0].score >= threshold:
                kept = proposal.model_copy(update={"candidates": top[: max(self.k, _MIN_TOP_K)]})
                return self._stamp(kept, Decision.LOCAL_CONFIDENT)
        shortlist = None
        if self.strategy != "llm" and proposal is not None:
            shortlist = [c.label for c in proposal.candidates[: self.k]]
        result = (
            self.llm.classify(text, shortlist=shortlist) if shortlist else self.llm.classify(text)
        )
        return self._stamp(self._vote(result, proposal, profile))

    def _local_model(self) -> Classifier | None:
        """The first local model that loads (the one that proposes), or None."""
        for classifier in self.local:
            get = getattr(classifier, "get", None)
            try:
                if callable(get):
                    get()
            except ClassifierError:
                continue
            return classifier
        return None

    def _profile(self, local: Classifier | None) -> Profile | None:
        if self.calibration is None or local is None:
            return None
        return self.calibration.profile_for(local.name, getattr(local, "model_sha256", None))

    def _vote(
        self, result: Classification, proposal: Classification | None, profile: Profile | None
    ) -> Classification:
        """The LLM's answer with a confidence; combined with ``proposal`` under ``profile``."""
        answer = result.llm_answer or LLMAnswer(label=result.label)  # a cache entry of old
        if profile is None or (profile.key.local_kind != getattr(proposal, "source", None)):
            # No profile for the model that proposed (another one answered): as before.
            confidence = DEFAULT_LLM_CONFIDENCE
            return result.model_copy(
                update={
                    "confidence": confidence,
                    "candidates": [Candidate(label=answer.label, score=confidence)],
                    "llm_answer": answer.model_copy(update={"confidence": None}),
                }
            )
        params = profile.params
        alone = params.llm_alone(answer.logprob)
        answer = answer.model_copy(update={"confidence": alone})
        if not self.combine or proposal is None:
            return result.model_copy(
                update={
                    "confidence": alone,
                    "candidates": [Candidate(label=answer.label, score=alone)],
                    "llm_answer": answer,
                }
            )
        n_labels = self.n_labels or max(len(proposal.candidates), 1)
        posterior = params.combine(proposal.candidates, n_labels, answer.label, answer.logprob)
        best = posterior[0]
        local_top = proposal.candidates[0].label if proposal.candidates else None
        return result.model_copy(
            update={
                "label": best.label,
                "confidence": best.score,
                "candidates": posterior[:_MIN_TOP_K],
                "llm_answer": answer,
                "local_candidates": proposal.candidates[:_MIN_TOP_K],
                "followed": followed(best.label, answer.label, local_top),
            }
        )

    def propose(self, text: str) -> Classification | None:
        """The first local model's ranking of at least ``k`` labels, or ``None``."""
        reasons = []
        for classifier in self.local:
            try:
                return _ranked(classifier, text, max(self.k, LOCAL_TOP_K))
            except ClassifierError as exc:
                reasons.append(f"{classifier.name}: {exc.reason}")
        if not self._warned_no_local:
            self._warned_no_local = True
            logger.warning(
                "strategy %s: no local model can answer (%s); the LLM gets the full label "
                "list and is not combined with a local model",
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
