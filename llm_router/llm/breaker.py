"""A circuit breaker: switch the LLM off for a while instead of paying a round trip per text."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from enum import Enum

from llm_router.errors import LLMUnavailable
from llm_router.reasons import Reason

logger = logging.getLogger(__name__)


class Outcome(Enum):
    """What one attempt told the breaker about the endpoint."""

    ANSWERED = "answered"  # any HTTP answer that is not a transient failure (4xx included)
    FAILED = "failed"  # transient: timeout, connection error, 429, 5xx
    AUTH_FAILED = "auth_failed"  # 401/402: the key is dead or out of credit
    NOT_SENT = "not_sent"  # refused by the budget: says nothing about the endpoint


class CircuitBreaker:
    """Closed → open after ``threshold`` transient failures in a row (or one 401/402) →
    half-open after the cool-down, when exactly one attempt goes through as a probe: its
    success closes the breaker, its failure opens it again. While open (and while the probe
    is out) every other attempt is refused at once with reason ``circuit_open``.

    Only transient failures count: a 400/403/404 or a malformed body is the endpoint
    answering, so it neither trips the breaker nor fails a probe.
    """

    def __init__(
        self,
        threshold: int,
        cooldown_s: float,
        auth_cooldown_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.auth_cooldown_s = auth_cooldown_s
        self.trips = 0
        self.cause: str | None = None  # the failure that last opened it
        self._failures = 0
        self._open = False
        self._open_until = 0.0
        self._probe_out = False
        self._lock = threading.Lock()

    def admit(self) -> bool:
        """Let one attempt through, or raise ``circuit_open``. Returns True for a probe.

        Raises:
            LLMUnavailable: reason ``circuit_open``; the message names the cause.
        """
        with self._lock:
            if not self._open:
                return False
            if self.clock() >= self._open_until and not self._probe_out:
                self._probe_out = True
                return True
            left = max(0.0, self._open_until - self.clock())
        raise LLMUnavailable(
            f"LLM switched off after {self.cause} (retried in {left:.0f} s)",
            reason=Reason.CIRCUIT_OPEN,
        )

    def recheck(self, probe: bool) -> None:
        """After a wait for a rate-limit slot: refuse if the breaker opened meanwhile."""
        if not probe and self.is_open:
            raise LLMUnavailable(f"LLM switched off after {self.cause}", reason=Reason.CIRCUIT_OPEN)

    def record(self, outcome: Outcome, reason: str, *, probe: bool) -> None:
        """Tell the breaker how an admitted attempt ended."""
        with self._lock:
            if probe:
                self._probe_out = False
            if outcome is Outcome.NOT_SENT:
                return
            if outcome is Outcome.ANSWERED:
                if self._open:
                    logger.info("LLM endpoint answers again; circuit closed")
                self._open = False
                self._failures = 0
                return
            self._failures += 1
            if outcome is Outcome.AUTH_FAILED:
                self._trip(reason, self.auth_cooldown_s)
            elif probe or self._failures >= self.threshold:
                self._trip(reason, self.cooldown_s)

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._open

    def _trip(self, reason: str, seconds: float) -> None:
        if not self._open:
            self.trips += 1
            logger.warning("LLM switched off for %.0f s after %s", seconds, reason)
        self._open = True
        self._open_until = self.clock() + seconds
        self.cause = reason
