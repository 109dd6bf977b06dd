"""LLMClassifier: one OpenAI-compatible chat call, retried with tenacity, validated strictly."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
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

from llm_router.errors import BudgetExceeded, ClassifierError, LLMResponseInvalid, LLMUnavailable
from llm_router.labels import LabelSet
from llm_router.llm.breaker import CircuitBreaker, Outcome
from llm_router.llm.budget import Budget, Reservation, trusted_cost
from llm_router.llm.ratelimit import RateLimiter
from llm_router.llm.redact import redact_url
from llm_router.llm.transport import AUTH_STATUS, Reply, TokenLogprob, post_chat
from llm_router.prompts import Prompt, load_prompt
from llm_router.reasons import Decision, Reason
from llm_router.schemas import DEFAULT_LLM_CONFIDENCE, Candidate, Classification, LLMAnswer, Usage
from llm_router.settings import Settings

logger = logging.getLogger(__name__)


NONE_OF_THESE = "none"  # the shortlist prompt's answer when no candidate fits
_NONE_ANSWERS = frozenset({"none", "none of these", "none of the above"})


class _Answer(BaseModel):
    label: str


@dataclass(frozen=True)
class _Question:
    """What the model is asked: a prompt, the labels it may answer, their rendered system
    message and the structured-output constraint."""

    prompt: Prompt
    labels: LabelSet  # the labels offered
    system: str
    response_format: dict[str, Any] | None
    allow_none: bool = False
    deployed: LabelSet | None = None  # answers are normalised in this space (default: labels)

    def parse(self, content: str | None) -> str | None:
        """The offered label the answer names, ``none`` where allowed, else ``None``.

        An answer is normalised in the whole deployed label space first (so ``math.AG`` stays
        ``math.AG`` and is not read as a shortlisted ``math``), then must be one offered.
        """
        if content is None:
            return None
        bare = _bare_answer(content)
        if self.allow_none and bare.strip().strip(" .\"'`").lower() in _NONE_ANSWERS:
            return NONE_OF_THESE
        label = (self.deployed or self.labels).parse_answer(bare)
        return label if label is not None and label in self.labels else None

    def reask(self, content: str | None) -> str:
        hint = self.labels.archive_hint(_bare_answer(content))
        return f"{self.prompt.reask_text}\n{hint}" if hint else self.prompt.reask_text


class LLMClassifier:
    """Classifies with a chat model at any OpenAI-compatible endpoint.

    Every HTTP attempt (retries and the one corrective re-ask included) goes through one
    path, :meth:`_attempt`: circuit breaker → budget reservation → rate limiter → send →
    settle, and its usage is added to the text's :class:`Usage`. Transient failures are
    retried by tenacity only (the OpenAI client gets ``max_retries=0``); everything else
    raises a :class:`~llm_router.errors.ClassifierError` at once, for the router to fall back.
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
        shortlist_prompt: Prompt | None = None,
    ) -> None:
        self.settings = settings
        self.labels = labels
        self.prompt = prompt
        self.limiter = limiter or RateLimiter(settings.rpm, max_pause_s=settings.retry_after_max_s)
        self.budget = budget
        self.breaker = breaker or CircuitBreaker(
            settings.breaker_threshold, settings.breaker_cooldown_s, settings.auth_cooldown_s
        )
        self._shortlist_prompt = shortlist_prompt  # loaded on first use
        self._full = _Question(
            prompt, labels, prompt.system(labels), self._response_format(labels.labels)
        )
        self._client_lock = threading.Lock()
        self._closer: weakref.finalize[Any, Any] | None = None
        self._client: openai.OpenAI | None = client or self._own_client()
        self.fingerprint = self._build_fingerprint()

    def _build_client(self) -> openai.OpenAI:
        if self.settings.api_key is None:
            raise LLMUnavailable("no API key configured", reason=Reason.NO_API_KEY)
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

    def _response_format(self, codes: Sequence[str]) -> dict[str, Any] | None:
        schema = {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": list(codes)}},
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
        """Close the HTTP connection pool (a later call opens a new one)."""
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None
            if self._closer is not None:
                self._closer.detach()
                self._closer = None

    def _own_client(self) -> openai.OpenAI:
        """Build the HTTP client and close it when this object is collected, so a router
        dropped without ``close()`` leaks no sockets (garbage collection would otherwise
        reach the pool's sockets in any order, each one unclosed)."""
        client = self._build_client()
        self._closer = weakref.finalize(self, client.close)
        return client

    def _http(self) -> openai.OpenAI:
        with self._client_lock:
            if self._client is None:
                self._client = self._own_client()
            return self._client

    def cache_key(self, text: str, *, shortlist: Sequence[str] | None = None) -> str:
        """Key of ``text`` under everything that can change the answer (the text is hashed).

        A shortlist request is another request: its key adds the shortlist prompt and the
        offered labels, in order, so strategies share an answer only for the same request.
        """
        text_hash = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        material = f"{self.fingerprint}:{text_hash}"
        if shortlist:
            offered = ",".join(self._offered(shortlist).labels)
            prompt = self.shortlist_prompt
            material += f":{prompt.version}:{prompt.sha256}:{offered}"
        return hashlib.sha256(material.encode()).hexdigest()

    @property
    def shortlist_prompt(self) -> Prompt:
        """The prompt for shortlist questions: ``LLM_ROUTER_SHORTLIST_PROMPT`` (with a "none
        of these" answer) or, with ``LLM_ROUTER_SHORTLIST_WIDEN=false``, the strict one."""
        if self._shortlist_prompt is None:
            settings = self.settings
            version = (
                settings.shortlist_prompt
                if settings.shortlist_widen
                else settings.shortlist_strict_prompt
            )
            self._shortlist_prompt = load_prompt(version, settings.prompts_dir)
        return self._shortlist_prompt

    def _offered(self, shortlist: Sequence[str]) -> LabelSet:
        """The shortlist as a label set: deployed labels only, each once, in the given order."""
        codes = tuple(dict.fromkeys(c for c in shortlist if c in self.labels))
        if not codes:
            raise LLMResponseInvalid(
                f"no label of the shortlist {list(shortlist)[:5]} is deployed",
                reason=Reason.LABEL_MISMATCH,
            )
        return LabelSet(codes)

    def _shortlist_question(self, shortlist: Sequence[str]) -> _Question:
        offered = self._offered(shortlist)
        widen = self.settings.shortlist_widen
        return _Question(
            self.shortlist_prompt,
            offered,
            self.shortlist_prompt.system(offered),
            self._response_format([*offered.labels, NONE_OF_THESE] if widen else offered.labels),
            allow_none=widen,
            deployed=self.labels,
        )

    def classify(self, text: str, *, shortlist: Sequence[str] | None = None) -> Classification:
        """Ask the model for one label; raises a ClassifierError when it cannot give one.

        With ``shortlist``, the model is offered only those labels. Only with
        ``LLM_ROUTER_SHORTLIST_WIDEN=true`` is "none of these" offered too, and then "none"
        widens the question to the full list once; by default the shortlist is strict. The
        error carries ``usage``: what the failed attempts spent.
        """
        started = time.perf_counter()
        text = text[: self.settings.max_input_chars]  # the label only needs the start
        spent: list[Usage] = []
        question = self._full
        decision = Decision.LLM
        try:
            if shortlist:
                question = self._shortlist_question(shortlist)
                decision = Decision.LLM_SHORTLIST
            label, reply = self._ask(question, text, spent)
            if label == NONE_OF_THESE:
                logger.info(
                    "llm found none of the %d shortlisted labels: widening", len(question.labels)
                )
                question, decision = self._full, Decision.LLM_WIDENED
                label, reply = self._ask(question, text, spent)
        except ClassifierError as exc:
            exc.usage = _total(spent)
            raise
        return Classification(
            label=label,
            confidence=DEFAULT_LLM_CONFIDENCE,  # the voter's calibration replaces it
            source=self.name,
            candidates=[Candidate(label=label, score=DEFAULT_LLM_CONFIDENCE)],
            llm_answer=LLMAnswer(label=label, logprob=label_logprob(reply)),
            latency_ms=(time.perf_counter() - started) * 1000,
            model=reply.model or self.settings.model,
            prompt_version=question.prompt.version,
            usage=_total(spent),
            decision=decision,
            shortlist=list(self._offered(shortlist).labels) if shortlist else None,
        )

    def _ask(self, question: _Question, text: str, spent: list[Usage]) -> tuple[str, Reply]:
        """One question, with at most one corrective re-ask: the label (or ``none``)."""
        messages: list[dict[str, str]] = [
            {"role": "system", "content": question.system},
            {"role": "user", "content": question.prompt.user(text)},
        ]
        reply = self._complete(messages, spent, question.response_format)
        label = question.parse(reply.content)
        if label is None:
            logger.info("llm answer was not an allowed label; asking once more")
            messages.append({"role": "assistant", "content": (reply.content or "")[:500]})
            messages.append({"role": "user", "content": question.reask(reply.content)})
            reply = self._complete(messages, spent, question.response_format)
            label = question.parse(reply.content)
            if label is None:
                raise LLMResponseInvalid(
                    f"answer {(reply.content or '')[:80]!r} is not an allowed label, twice"
                )
        return label, reply

    # -- one text's attempts ----------------------------------------------------------------
    def _complete(
        self,
        messages: list[dict[str, str]],
        spent: list[Usage],
        response_format: dict[str, Any] | None,
    ) -> Reply:
        retrying = Retrying(
            stop=stop_after_attempt(self.settings.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(self._should_retry),
            before_sleep=self._log_retry,
            reraise=True,
        )
        failures: list[LLMUnavailable] = []
        try:
            reply: Reply = retrying(self._attempt, messages, spent, failures, response_format)
        except LLMUnavailable as exc:
            # A retry refused because the breaker opened meanwhile: the text's own failure
            # (e.g. connection_error) is the better reason.
            if exc.reason == Reason.CIRCUIT_OPEN and failures:
                raise failures[-1] from None
            raise
        return reply

    def _attempt(
        self,
        messages: list[dict[str, str]],
        spent: list[Usage],
        failures: list[LLMUnavailable],
        response_format: dict[str, Any] | None,
    ) -> Reply:
        """breaker → budget → rate limit → send → settle, for every HTTP attempt.

        Whatever happens after the reservation (even Ctrl-C while waiting for a slot), the
        reservation is settled or released and a probe is handed back, so no other thread is
        left waiting on them.
        """
        probe = self.breaker.admit()
        try:
            reservation = self._reserve(messages)
        except BaseException:
            self.breaker.record(Outcome.NOT_SENT, Reason.BUDGET, probe=probe)
            raise
        sent = False
        try:
            self.limiter.acquire(abort=None if probe else lambda: self.breaker.is_open)
            self.breaker.recheck(probe)
            sent = True
            body = self._body(messages, response_format)
            reply = post_chat(self._http(), body, self.settings.timeout_s)
        except LLMUnavailable as exc:
            if not sent:  # the breaker opened while this attempt waited for its slot
                self._release(reservation)
                raise
            failures.append(exc)
            spent.append(Usage(requests=1))
            self._settle_failed(reservation, exc)
            self.breaker.record(_outcome(exc), exc.reason, probe=probe)
            if exc.retry_after_s is not None:
                self.limiter.slow_down(exc.retry_after_s)  # capped at RETRY_AFTER_MAX_S
            raise
        except BaseException:
            if sent and self.budget is not None and reservation is not None:
                self.budget.settle_failed(reservation, billed=True)
            else:
                self._release(reservation)
            self.breaker.record(Outcome.NOT_SENT, "interrupted", probe=probe)
            raise
        usage = reply.usage
        spent.append(
            Usage(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost_usd=trusted_cost(usage.cost),
                requests=1,
            )
        )
        if self.budget is not None and reservation is not None:
            self.budget.settle(
                reservation, usage.prompt_tokens, usage.completion_tokens, usage.cost
            )
        self.breaker.record(Outcome.ANSWERED, "answered", probe=probe)
        return reply

    def _release(self, reservation: Reservation | None) -> None:
        if self.budget is not None and reservation is not None:
            self.budget.release(reservation)

    def _body(
        self, messages: list[dict[str, str]], response_format: dict[str, Any] | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": messages,
            "temperature": self.settings.temperature,
            "max_tokens": self.settings.max_completion_tokens,
        }
        if response_format is not None:
            body["response_format"] = response_format
        if self.settings.logprobs:  # a calibration input; endpoints without them ignore it
            body["logprobs"] = True
            body["top_logprobs"] = 1  # llama.cpp's server returns none without it
        if "openrouter.ai" in self.settings.endpoint:
            body["usage"] = {"include": True}  # ask OpenRouter for usage.cost
        return body

    def _reserve(self, messages: list[dict[str, str]]) -> Reservation | None:
        if self.budget is None:
            return None
        # Upper estimate: ~3 characters per token, plus the whole completion allowance.
        chars = sum(len(m["content"]) for m in messages)
        try:
            return self.budget.reserve(chars // 3, self.settings.max_completion_tokens)
        except BudgetExceeded as exc:
            raise LLMUnavailable(str(exc), reason=Reason.BUDGET) from exc

    def _settle_failed(self, reservation: Reservation | None, exc: LLMUnavailable) -> None:
        if self.budget is not None and reservation is not None:
            # An HTTP error status or a failed connection was not billed; a timeout or a
            # broken body may have been.
            billed = exc.reason in (Reason.TIMEOUT, Reason.BAD_RESPONSE)
            self.budget.settle_failed(reservation, billed=billed)

    def _should_retry(self, exc: BaseException) -> bool:
        if not isinstance(exc, LLMUnavailable) or not exc.transient:
            return False
        if exc.retry_after_s is not None and exc.retry_after_s > self.settings.retry_after_max_s:
            logger.info(
                "Retry-After %.0f s is above LLM_ROUTER_RETRY_AFTER_MAX_S: not waiting",
                exc.retry_after_s,
            )
            return False
        return True

    def _wait(self, state: RetryCallState) -> float:
        base = wait_random_exponential(multiplier=0.5, max=self.settings.retry_max_wait_s)(state)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after_s", None)
        return base if retry_after is None else max(base, float(retry_after))

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.info(
            "llm attempt %d at %s failed (%s); retrying",
            state.attempt_number,
            redact_url(self.settings.endpoint),
            exc,
        )


def _outcome(exc: LLMUnavailable) -> Outcome:
    if exc.status in AUTH_STATUS:
        return Outcome.AUTH_FAILED
    if exc.transient and exc.reason != Reason.BAD_RESPONSE:
        return Outcome.FAILED
    return Outcome.ANSWERED  # the endpoint is up: a 400/403/404 or a malformed body


def _bare_answer(content: str | None) -> str:
    """The label text inside a possibly fenced ``{"label": ...}`` answer."""
    text = (content or "").strip()
    if text.startswith("```"):  # a fenced block: ```json {...} ```
        text = text.strip("`").removeprefix("json").strip()
    if text.startswith("{"):
        try:
            return _Answer.model_validate_json(text).label
        except ValidationError:
            return ""
    return text


def label_logprob(reply: Reply) -> float | None:
    """The log-probability of the answer's label: the sum over the tokens that spell it.

    Tokens are located by their text in the message; when they do not spell the message
    (an endpoint that reports something else), the sum over all tokens is used, the JSON
    around the label being near-certain under a structured-output constraint.
    """
    tokens: list[TokenLogprob] | None = reply.tokens
    content = reply.content or ""
    if not tokens:
        return None
    if "".join(t.token for t in tokens) != content:
        return max(-50.0, sum(t.logprob for t in tokens))
    bare = _bare_answer(content).strip()
    start = content.find(bare) if bare else -1
    if start < 0:
        return max(-50.0, sum(t.logprob for t in tokens))
    end, total, at = start + len(bare), 0.0, 0
    for token in tokens:
        if at < end and at + len(token.token) > start:
            total += token.logprob
        at += len(token.token)
    return max(-50.0, total)


def _total(spent: list[Usage]) -> Usage:
    total = Usage()
    for usage in spent:
        total = total + usage
    return total
