"""LLMClassifier: one OpenAI-compatible chat call, retried with tenacity, validated strictly."""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import openai
from pydantic import BaseModel, ValidationError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from llm_router.breaker import CircuitBreaker
from llm_router.budget import Budget, Reservation
from llm_router.errors import BudgetExceeded, LLMResponseInvalid, LLMUnavailable
from llm_router.labels import LabelSet
from llm_router.prompts import Prompt
from llm_router.ratelimit import RateLimiter
from llm_router.schemas import Candidate, Classification, Usage
from llm_router.settings import Settings

logger = logging.getLogger(__name__)

_TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_AUTH_STATUS = frozenset({401, 402})


class _Answer(BaseModel):
    label: str


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms``."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value.strip() else None
        return None if parsed is None else max(0.0, parsed.timestamp() - time.time())


def _is_transient(status: int) -> bool:
    return status in _TRANSIENT_STATUS or status >= 500


class LLMClassifier:
    """Classifies with a chat model at any OpenAI-compatible endpoint.

    Every HTTP attempt (retries and the one corrective re-ask included) reserves the budget
    and waits for the rate limiter before it is sent. Transient failures are retried by
    tenacity only (the OpenAI client gets ``max_retries=0``); everything else raises a
    :class:`~llm_router.errors.ClassifierError` at once, for the router to fall back.
    """

    name = "llm"

    def __init__(
        self,
        settings: Settings,
        labels: LabelSet,
        prompt: Prompt,
        *,
        limiter: RateLimiter | None = None,
        budget: Budget | None = None,
        breaker: CircuitBreaker | None = None,
        client: openai.OpenAI | None = None,
    ) -> None:
        self.settings = settings
        self.labels = labels
        self.prompt = prompt
        self.limiter = limiter or RateLimiter(settings.rpm)
        self.budget = budget
        self.breaker = breaker or CircuitBreaker(
            settings.breaker_threshold, settings.breaker_cooldown_s, settings.auth_cooldown_s
        )
        self._system = prompt.system(labels)
        self._response_format = self._build_response_format()
        self._client = client or self._build_client()
        self.fingerprint = self._build_fingerprint()

    def _build_client(self) -> openai.OpenAI:
        if self.settings.api_key is None:
            raise LLMUnavailable("no API key configured", reason="no_api_key")
        headers = {}
        if self.settings.http_referer:
            headers["HTTP-Referer"] = self.settings.http_referer
        if self.settings.app_title:
            headers["X-Title"] = self.settings.app_title
        return openai.OpenAI(
            base_url=self.settings.endpoint,
            api_key=self.settings.api_key.get_secret_value(),
            timeout=self.settings.timeout_s,
            max_retries=0,  # tenacity owns retries
            default_headers=headers,
        )

    def _build_response_format(self) -> dict[str, Any] | None:
        schema = {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": list(self.labels.labels)}},
            "required": ["label"],
            "additionalProperties": False,
        }
        mode = self.settings.structured_output
        if mode == "json_schema":  # OpenAI / OpenRouter form
            return {
                "type": "json_schema",
                "json_schema": {"name": "arxiv_category", "strict": True, "schema": schema},
            }
        if mode == "json_object":  # llama.cpp server form
            return {"type": "json_object", "schema": schema}
        return None

    def _build_fingerprint(self) -> str:
        parts = {
            "endpoint": self.settings.endpoint,
            "model": self.settings.model,
            "prompt": self.prompt.version,
            "prompt_sha256": self.prompt.sha256,
            "labels_sha256": self.labels.sha256,
            "temperature": self.settings.temperature,
            "max_completion_tokens": self.settings.max_completion_tokens,
            "structured_output": self.settings.structured_output,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def cache_key(self, text: str) -> str:
        """Key of ``text`` under everything that can change the answer (the text is hashed)."""
        text_hash = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        return hashlib.sha256(f"{self.fingerprint}:{text_hash}".encode()).hexdigest()

    def classify(self, text: str) -> Classification:
        """Ask the model for one label; raises a ClassifierError when it cannot give one."""
        reason = self.breaker.open_reason()
        if reason is not None:
            raise LLMUnavailable(f"LLM switched off for now after {reason}", reason=reason)
        started = time.perf_counter()
        text = text[: self.settings.max_input_chars]  # the label only needs the start
        messages: list[dict[str, str]] = [
            {"role": "system", "content": self._system},
            {"role": "user", "content": self.prompt.user(text)},
        ]
        content, model, usage = self._complete(messages)
        label = self._parse(content)
        if label is None:
            logger.info("llm answer was not an allowed label; asking once more")
            messages.append({"role": "assistant", "content": (content or "")[:500]})
            messages.append({"role": "user", "content": self.prompt.reask_text})
            content, model, more = self._complete(messages)
            usage = usage + more
            label = self._parse(content)
            if label is None:
                raise LLMResponseInvalid(
                    f"answer {(content or '')[:80]!r} is not an allowed label, twice"
                )
        return Classification(
            label=label,
            source=self.name,
            candidates=[Candidate(label=label, score=1.0)],
            latency_ms=(time.perf_counter() - started) * 1000,
            model=model,
            prompt_version=self.prompt.version,
            usage=usage,
        )

    def _parse(self, content: str | None) -> str | None:
        if content is None:
            return None
        text = content.strip()
        if text.startswith("```"):  # a fenced block: ```json {...} ```
            text = text.strip("`").removeprefix("json").strip()
        if text.startswith("{"):
            try:
                text = _Answer.model_validate_json(text).label
            except ValidationError:
                return None
        return self.labels.parse_answer(text)

    def _complete(self, messages: list[dict[str, str]]) -> tuple[str | None, str, Usage]:
        retrying = Retrying(
            stop=stop_after_attempt(self.settings.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(self._should_retry),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            result: tuple[str | None, str, Usage] = retrying(self._attempt, messages)
        except LLMUnavailable as exc:
            if exc.reason != "budget":
                status = exc.reason.removeprefix("http_")
                self.breaker.record_failure(
                    exc.reason, auth=status.isdigit() and int(status) in _AUTH_STATUS
                )
            raise
        self.breaker.record_success()
        return result

    def _should_retry(self, exc: BaseException) -> bool:
        if not isinstance(exc, LLMUnavailable) or not exc.transient:
            return False
        return exc.retry_after_s is None or exc.retry_after_s <= self.settings.retry_after_max_s

    def _wait(self, state: RetryCallState) -> float:
        base = wait_random_exponential(multiplier=0.5, max=self.settings.retry_max_wait_s)(state)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after_s", None)
        return base if retry_after is None else max(base, float(retry_after))

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.info("llm attempt %d failed (%s); retrying", state.attempt_number, exc)

    def _reserve(self, messages: list[dict[str, str]]) -> Reservation | None:
        if self.budget is None:
            return None
        # Upper estimate: ~3 characters per token, plus the whole completion allowance.
        chars = sum(len(m["content"]) for m in messages)
        estimate = chars // 3 + self.settings.max_completion_tokens
        try:
            return self.budget.reserve(estimate)
        except BudgetExceeded as exc:
            raise LLMUnavailable(str(exc), reason="budget") from exc

    def _attempt(self, messages: list[dict[str, str]]) -> tuple[str | None, str, Usage]:
        reservation = self._reserve(messages)
        self.limiter.acquire()
        usage = Usage(requests=1)
        try:
            body = self._send(messages)
            content, model, usage = self._read_body(body)
            return content, model, usage
        finally:
            if reservation is not None and self.budget is not None:
                self.budget.settle(
                    reservation, usage.prompt_tokens + usage.completion_tokens, usage.cost_usd
                )

    def _send(self, messages: list[dict[str, str]]) -> Any:
        kwargs: dict[str, Any] = {
            "model": self.settings.model,
            "messages": messages,
            "temperature": self.settings.temperature,
            "max_tokens": self.settings.max_completion_tokens,
        }
        if self._response_format is not None:
            kwargs["response_format"] = self._response_format
        if "openrouter.ai" in self.settings.endpoint:
            kwargs["usage"] = {"include": True}  # ask OpenRouter for usage.cost
        try:
            # The SDK's low-level post: same auth, timeout and error mapping as
            # chat.completions.create, without its per-call type transform of the request
            # (~4 ms of Python for a 150-label schema) or response models: the body is
            # validated here.
            return self._client.post("/chat/completions", cast_to=object, body=kwargs)
        except openai.APITimeoutError as exc:
            raise _transient(f"no answer within {self.settings.timeout_s} s", "timeout") from exc
        except openai.APIConnectionError as exc:
            raise _transient("could not connect to the endpoint", "connection_error") from exc
        except openai.APIStatusError as exc:
            status = exc.status_code
            retry_after = _retry_after_s(exc.response.headers)
            if status == 429 and retry_after:
                self.limiter.slow_down(retry_after)
            reason = "rate_limited" if status == 429 else f"http_{status}"
            raise LLMUnavailable(
                f"endpoint answered HTTP {status}",
                reason=reason,
                retry_after_s=retry_after,
                transient=_is_transient(status),
            ) from exc
        except ValueError as exc:  # HTTP 200 whose body is not JSON
            raise _transient("endpoint sent a body that is not JSON", "bad_response") from exc

    def _read_body(self, body: Any) -> tuple[str | None, str, Usage]:
        if not isinstance(body, dict):
            raise _transient("endpoint sent an unexpected body", "bad_response")
        error = body.get("error")
        if error is not None:  # OpenRouter reports upstream failures as HTTP 200 + error
            code = error.get("code") if isinstance(error, dict) else None
            status = code if isinstance(code, int) else 502
            raise LLMUnavailable(
                f"endpoint returned an error body ({status})",
                reason=f"http_{status}",
                transient=_is_transient(status),
            )
        raw_usage = body.get("usage") or {}
        cost = raw_usage.get("cost")
        usage = Usage(
            prompt_tokens=int(raw_usage.get("prompt_tokens") or 0),
            completion_tokens=int(raw_usage.get("completion_tokens") or 0),
            cost_usd=float(cost) if isinstance(cost, int | float) else None,
            requests=1,
        )
        try:
            content = body["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise _transient("endpoint sent no choices", "bad_response") from exc
        model = body.get("model") or self.settings.model
        return (content if isinstance(content, str) else None), str(model), usage


def _transient(message: str, reason: str) -> LLMUnavailable:
    return LLMUnavailable(message, reason=reason, transient=True)
