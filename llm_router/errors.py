"""The exception hierarchy; callers catch :class:`RouterError`.

::

    RouterError                  callers catch this one
    ├── ConfigError              invalid settings, unknown prompt version
    ├── ClassifierError          one classifier failed; has .classifier and .reason
    │   ├── LLMUnavailable       no key, timeout, connection error, 429/5xx after retries, 4xx
    │   ├── LLMResponseInvalid   output failed validation or the label is not allowed
    │   └── ModelNotAvailable    fallback artifact or optional dependency missing or refused
    └── AllClassifiersFailed     has .errors: list[ClassifierError], one per classifier

``reason`` is a short machine-readable word (a :class:`~llm_router.reasons.Reason`, or
``http_<status>``) that ends up in ``Classification.fallback_reason`` and in reports.
:func:`reason_of` and :func:`spent_by` read it, and what the failed attempts cost, from any
failure a caller holds; the corpus job, the service and the evaluation all use them.

:class:`BudgetExceeded` is internal: the budget raises it before a request would go over a
limit, and the LLM link turns it into ``LLMUnavailable(reason="budget")``, so a caller sees
a fallback (or ``AllClassifiersFailed``), never this class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llm_router.reasons import Reason

if TYPE_CHECKING:
    from llm_router.schemas import Usage


class RouterError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(RouterError, ValueError):
    """Invalid settings or an unknown prompt version; the message is one line that names the
    environment variable and what it accepts. CLIs turn it into exit code 2."""


class ClassifierError(RouterError):
    """One classifier could not answer; the router moves on to the next one."""

    def __init__(self, message: str, *, classifier: str, reason: str) -> None:
        super().__init__(message)
        self.classifier = classifier
        self.reason = str(reason)  # a plain string, also when given a Reason
        self.usage: Usage | None = None  # what the failed attempts spent (the LLM's)

    def __str__(self) -> str:
        return f"[{self.classifier}: {self.reason}] {self.args[0]}"


class LLMUnavailable(ClassifierError):
    """The endpoint could not be used: no key, timeout, connection error, HTTP error."""

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        classifier: str = "llm",
        status: int | None = None,
        retry_after_s: float | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message, classifier=classifier, reason=reason)
        self.status = status  # the HTTP status, when the endpoint sent one
        self.retry_after_s = retry_after_s
        self.transient = transient  # worth retrying: timeout, connection, 429, 5xx, bad body


class LLMResponseInvalid(ClassifierError):
    """The endpoint answered, but not with an allowed label."""

    def __init__(self, message: str, *, reason: str = "invalid_label", classifier: str = "llm"):
        super().__init__(message, classifier=classifier, reason=reason)


class ModelNotAvailable(ClassifierError):
    """A local model's artifacts or optional dependencies are missing, or were refused."""


class AllClassifiersFailed(RouterError):
    """Every classifier in the chain failed; ``errors`` says why, one per classifier."""

    def __init__(self, errors: list[ClassifierError]) -> None:
        self.errors = errors
        detail = "; ".join(str(e) for e in errors) or "the chain is empty"
        super().__init__(f"no classifier could answer: {detail}")


class BudgetExceeded(RouterError):
    """Sending one more request would exceed the request, token or USD budget (internal: the
    LLM link reports it as ``LLMUnavailable(reason="budget")``)."""


def reason_of(exc: BaseException) -> str:
    """The short reason a row failed: ``invalid_input`` for a refused text, the first
    classifier's reason for a whole chain, a classifier's own reason, else the class name."""
    if isinstance(exc, TypeError | ValueError) and not isinstance(exc, RouterError):
        return Reason.INVALID_INPUT
    if isinstance(exc, AllClassifiersFailed):
        return exc.errors[0].reason if exc.errors else "failed"
    if isinstance(exc, ClassifierError):
        return exc.reason
    return type(exc).__name__


def spent_by(exc: BaseException) -> Usage | None:
    """What the failed LLM attempts of a row spent (the first classifier's, for a chain)."""
    if isinstance(exc, AllClassifiersFailed):
        return exc.errors[0].usage if exc.errors else None
    return exc.usage if isinstance(exc, ClassifierError) else None
