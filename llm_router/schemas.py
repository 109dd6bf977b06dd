"""The one return type, :class:`Classification`, and its parts."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

# The confidence of an LLM answer when no calibration profile matches the router's setup:
# an answer of unknown reliability, never 1.0 (docs/confidence.md).
DEFAULT_LLM_CONFIDENCE = 0.5


class Candidate(BaseModel):
    """One label with the classifier's score for it (a probability for local models)."""

    model_config = ConfigDict(frozen=True)

    label: str
    score: float


class Usage(BaseModel):
    """What one classification cost at the endpoint (all attempts together)."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    requests: int = 0

    def __add__(self, other: Usage) -> Usage:
        cost = None
        if self.cost_usd is not None or other.cost_usd is not None:
            cost = (self.cost_usd or 0.0) + (other.cost_usd or 0.0)
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=cost,
            requests=self.requests + other.requests,
        )


class LLMAnswer(BaseModel):
    """What the LLM said, before it was combined with the local model's distribution."""

    model_config = ConfigDict(frozen=True)

    label: str
    logprob: float | None = Field(
        None, description="log-probability of the label's tokens, when the endpoint gives them"
    )
    confidence: float | None = Field(
        None, ge=0.0, le=1.0, description="calibrated P(the LLM's answer is right), alone"
    )


class Classification(BaseModel):
    """The answer for one text: the label and how it was obtained."""

    model_config = ConfigDict(frozen=True)

    label: str
    confidence: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="calibrated probability that label is right (default: the top candidate's "
        "score)",
    )
    source: str = Field(
        description='the classifier that answered: "llm", or a local model kind '
        '("bert", "tfidf", "ensemble")'
    )
    cached: bool = False
    candidates: list[Candidate] = Field(default_factory=list)
    fallback_reason: str | None = None
    latency_ms: float = 0.0
    model: str | None = None
    prompt_version: str | None = None
    usage: Usage | None = None
    strategy: str | None = Field(
        None, description='"llm", "shortlist" or "cascade": how the router used the LLM'
    )
    decision: str | None = Field(
        None,
        description="where the answer was decided: llm (full list), llm_shortlist, "
        "llm_widened (none of the shortlist fitted: full list), llm_no_shortlist (no local "
        "model to propose one), local_confident (cascade), fallback (the LLM failed)",
    )
    shortlist: list[str] | None = Field(
        None, description="the labels the LLM was offered first (shortlist and cascade)"
    )
    llm_answer: LLMAnswer | None = Field(
        None, description="the LLM's own answer, when it was asked and answered"
    )
    local_candidates: list[Candidate] | None = Field(
        None, description="the local model's own top 5, when it was combined with the LLM"
    )
    followed: str | None = Field(
        None,
        description='whose answer the combination kept: "agree" (both said label), "llm", '
        '"local", or "neither"; None when nothing was combined',
    )

    @model_validator(mode="before")
    @classmethod
    def _confidence_from_candidates(cls, data: Any) -> Any:
        """A result built without ``confidence`` takes its top candidate's score."""
        if isinstance(data, dict) and data.get("confidence") is None:
            candidates = data.get("candidates") or []
            top = candidates[0] if candidates else None
            score = top.get("score") if isinstance(top, dict) else getattr(top, "score", None)
            data = {**data, "confidence": min(1.0, max(0.0, float(score or 0.0)))}
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def name(self) -> str:
        """The label's official arXiv name (``Computer Vision and Pattern Recognition``)."""
        from llm_router.labels import display_name

        return display_name(self.label)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def group(self) -> str | None:
        """The label's arXiv group (``Computer Science``, ``Physics``, ...); None for
        ``other``."""
        from llm_router.labels import group_of

        return group_of(self.label)
