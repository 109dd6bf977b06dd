"""The one return type, :class:`Classification`, and its parts."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, computed_field


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


class Classification(BaseModel):
    """The answer for one text: the label and how it was obtained."""

    model_config = ConfigDict(frozen=True)

    label: str
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
