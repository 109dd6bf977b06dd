"""Why a classifier could not answer: the short words in ``Classification.fallback_reason``.

Reasons are a :class:`~enum.StrEnum`, so they compare equal to (and serialise as) their plain
string value: ``Reason.TIMEOUT == "timeout"``. HTTP statuses without a word of their own read
``http_<status>`` (:func:`http_reason`).
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    NO_API_KEY = "no_api_key"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    RATE_LIMITED = "rate_limited"
    BAD_RESPONSE = "bad_response"
    CIRCUIT_OPEN = "circuit_open"
    INVALID_LABEL = "invalid_label"
    BUDGET = "budget"
    MISSING_ARTIFACTS = "missing_artifacts"
    MISSING_DEPENDENCY = "missing_dependency"
    BAD_ARTIFACTS = "bad_artifacts"
    TAMPERED_ARTIFACTS = "tampered_artifacts"
    LABEL_MISMATCH = "label_mismatch"
    INVALID_INPUT = "invalid_input"  # the text itself was refused (not a str, empty)


class Decision(StrEnum):
    """Where a :class:`~llm_router.schemas.Classification` was decided."""

    LLM = "llm"  # the LLM chose from the full label list
    LLM_SHORTLIST = "llm_shortlist"  # the LLM chose from the local model's top K
    LLM_WIDENED = "llm_widened"  # "none of these" from the shortlist, then the full list
    LLM_NO_SHORTLIST = "llm_no_shortlist"  # no local model could propose one: full list
    LOCAL_CONFIDENT = "local_confident"  # cascade: the local model was sure enough
    FALLBACK = "fallback"  # the LLM could not answer; a local model did


def http_reason(status: int) -> str:
    """``rate_limited`` for 429, else ``http_<status>`` (``http_502``, ``http_401``)."""
    return Reason.RATE_LIMITED if status == 429 else f"http_{status}"
