"""A client-side requests-per-minute limit that holds across threads, and honours
``Retry-After``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Spaces requests at least ``60 / rpm`` seconds apart, with no burst.

    Each caller reserves the next free slot under a lock, then sleeps outside it, so many
    threads share one schedule. ``rpm=None`` means no spacing; a ``Retry-After`` from the
    endpoint (:meth:`slow_down`) holds every later request back in both cases, by at most
    ``max_pause_s``.
    """

    def __init__(self, rpm: float | None, *, max_pause_s: float = 60.0) -> None:
        if rpm is not None and rpm <= 0:
            raise ValueError(f"rpm must be positive, got {rpm}")
        self.interval_s = 0.0 if rpm is None else 60.0 / rpm
        self.max_pause_s = max_pause_s
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self, abort: Callable[[], bool] | None = None) -> float:
        """Wait for this caller's slot; returns how long it waited, in seconds.

        ``abort`` is polled while waiting: when it turns true (the circuit breaker opened,
        say) the wait ends early and the slot is left unused.
        """
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = max(self._next, slot + self.interval_s)
        wait = slot - now
        if wait > 0 and abort is None:
            time.sleep(wait)
        while abort is not None and not abort() and time.monotonic() < slot:
            time.sleep(min(0.05, max(0.0, slot - time.monotonic())))
        return wait

    def slow_down(self, seconds: float) -> None:
        """Push every later slot back by ``seconds`` (capped at ``max_pause_s``)."""
        pause = min(seconds, self.max_pause_s)
        with self._lock:
            self._next = max(self._next, time.monotonic() + pause)
