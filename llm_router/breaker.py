"""A circuit breaker: switch the LLM off for a while instead of paying a round trip per text."""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger(__name__)


class CircuitBreaker:
    """Opens after ``threshold`` transient failures in a row, or at once on an auth error.

    While open, :meth:`open_reason` names why and the LLM is skipped. After the cool-down the
    next call goes through as a probe: a success closes the breaker, a failure re-opens it.
    """

    def __init__(self, threshold: int, cooldown_s: float, auth_cooldown_s: float) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.auth_cooldown_s = auth_cooldown_s
        self._failures = 0
        self._open_until = 0.0
        self._reason: str | None = None
        self._lock = threading.Lock()

    def open_reason(self) -> str | None:
        """``None`` when calls may go through, else the reason the LLM is switched off."""
        with self._lock:
            if self._reason is not None and time.monotonic() < self._open_until:
                return self._reason
            return None

    def record_success(self) -> None:
        with self._lock:
            if self._reason is not None:
                logger.info("LLM endpoint answers again; circuit closed")
            self._failures = 0
            self._reason = None

    def record_failure(self, reason: str, *, auth: bool = False) -> None:
        with self._lock:
            self._failures += 1
            if auth:
                self._trip(reason, self.auth_cooldown_s)
            elif self._failures >= self.threshold:
                self._trip(reason, self.cooldown_s)

    def _trip(self, reason: str, seconds: float) -> None:
        self._open_until = time.monotonic() + seconds
        if self._reason is None:
            logger.warning("LLM switched off for %.0f s after %s", seconds, reason)
        self._reason = reason
