"""One chat-completions request on the wire, and its response body validated with pydantic.

Everything the endpoint can get wrong becomes an :class:`~llm_router.errors.LLMUnavailable`
with a ``reason``, the HTTP ``status`` (when there is one), ``retry_after_s`` and
``transient``: a timeout, a refused connection, an HTTP error, an error inside a 200, a body
that is not JSON or does not have the shape of a chat completion (``bad_response``). No
third-party exception and no ``ValueError`` from a malformed field leaves this module.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any

import openai
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llm_router.errors import LLMUnavailable
from llm_router.reasons import Reason, http_reason

TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
AUTH_STATUS = frozenset({401, 402})


def is_transient(status: int) -> bool:
    return status in TRANSIENT_STATUS or status >= 500


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date).

    Anything unparseable, negative or not finite (``soon``, ``inf``, ``nan``) means "no
    header": ``None``.
    """
    millis = _finite(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    value = headers.get("retry-after")
    if value is None or not value.strip():
        return None
    seconds = _finite(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _finite(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class BodyUsage(_Lenient):
    """``usage`` of a completion; token counts must be whole non-negative numbers."""

    prompt_tokens: int = Field(0, ge=0, strict=True)
    completion_tokens: int = Field(0, ge=0, strict=True)
    # Any number is accepted here; whether a reported cost can be trusted (finite, not
    # negative) is the budget's decision, which settles untrusted costs with its reservation.
    cost: float | None = None

    @field_validator("prompt_tokens", "completion_tokens", mode="before")
    @classmethod
    def _none_is_zero(cls, value: object) -> object:
        return 0 if value is None else value


class _Message(_Lenient):
    content: str | None = None


class TokenLogprob(_Lenient):
    """One generated token and its log-probability (``choices[0].logprobs.content[i]``)."""

    token: str
    logprob: float


class _Logprobs(_Lenient):
    content: list[TokenLogprob] | None = None


class _Choice(_Lenient):
    message: _Message
    logprobs: Any = None  # read by _tokens: a malformed one is ignored, never fatal


class ChatBody(_Lenient):
    """The parts of a chat-completion body the router reads."""

    choices: list[_Choice] = Field(min_length=1)
    model: str | None = None
    usage: BodyUsage | None = None


class ErrorBody(_Lenient):
    """OpenRouter reports upstream failures as HTTP 200 with an ``error`` object."""

    error: dict[str, Any] | str


class Reply(BaseModel):
    """A validated completion: the message text, the model that wrote it, the usage."""

    content: str | None
    model: str | None
    usage: BodyUsage
    tokens: list[TokenLogprob] | None = None  # when the endpoint returned log-probabilities


def post_chat(client: openai.OpenAI, body: dict[str, Any], timeout_s: float) -> Reply:
    """Send one request and validate the response.

    Raises:
        LLMUnavailable: with ``reason``, ``status``, ``retry_after_s`` and ``transient`` set.
    """
    try:
        # The SDK's low-level post: same auth, timeout and error mapping as
        # chat.completions.create, without its per-call type transform of the request
        # (~4 ms of Python for a 150-label schema) or its response models.
        raw = client.post("/chat/completions", cast_to=object, body=body)
    except openai.APITimeoutError as exc:
        raise _transient(f"no answer within {timeout_s:g} s", Reason.TIMEOUT) from exc
    except openai.APIConnectionError as exc:
        raise _transient("could not connect to the endpoint", Reason.CONNECTION_ERROR) from exc
    except openai.APIStatusError as exc:
        status = exc.status_code
        raise LLMUnavailable(
            f"endpoint answered HTTP {status}",
            reason=http_reason(status),
            status=status,
            retry_after_s=parse_retry_after(exc.response.headers),
            transient=is_transient(status),
        ) from exc
    except ValueError as exc:  # HTTP 200 whose body is not JSON
        raise _transient("endpoint sent a body that is not JSON", Reason.BAD_RESPONSE) from exc
    return read_body(raw)


def read_body(raw: object) -> Reply:
    """Validate a decoded response body (see :func:`post_chat`)."""
    if isinstance(raw, dict) and "error" in raw and raw["error"] is not None:
        try:
            error = ErrorBody.model_validate(raw).error
        except ValidationError:
            error = {}
        code = error.get("code") if isinstance(error, dict) else None
        status = code if isinstance(code, int) and 100 <= code <= 599 else 502
        raise LLMUnavailable(
            f"endpoint returned an error body ({status})",
            reason=http_reason(status),
            status=status,
            transient=is_transient(status),
        )
    try:
        body = ChatBody.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise _transient(
            f"endpoint sent a malformed completion ({where}: {first['msg']})",
            Reason.BAD_RESPONSE,
        ) from None
    choice = body.choices[0]
    return Reply(
        content=choice.message.content,
        model=body.model,
        usage=body.usage or BodyUsage(),
        tokens=_tokens(choice.logprobs),
    )


def _tokens(raw: object) -> list[TokenLogprob] | None:
    """The tokens' log-probabilities, or ``None`` when absent, malformed or not finite."""
    if raw is None:
        return None
    try:
        tokens = _Logprobs.model_validate(raw).content
    except ValidationError:
        return None
    if not tokens or not all(math.isfinite(t.logprob) and t.logprob <= 0 for t in tokens):
        return None
    return tokens


def _transient(message: str, reason: str) -> LLMUnavailable:
    return LLMUnavailable(message, reason=reason, transient=True)
