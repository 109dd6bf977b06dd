"""A client-side requests-per-minute limit that holds across threads."""

from __future__ import annotations

import threading
import time


class RateLimiter:
    """Spaces requests at least ``60 / rpm`` seconds apart, with no burst.

    Each caller reserves the next free slot under a lock, then sleeps outside it, so many
    threads share one schedule. ``rpm=None`` means no limit.
    """

    def __init__(self, rpm: float | None) -> None:
        if rpm is not None and rpm <= 0:
            raise ValueError(f"rpm must be positive, got {rpm}")
        self.interval_s = 0.0 if rpm is None else 60.0 / rpm
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait for this caller's slot; returns how long it waited, in seconds."""
        if self.interval_s == 0.0:
            return 0.0
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval_s
        wait = slot - now
        if wait > 0:
            time.sleep(wait)
        return wait

    def slow_down(self, seconds: float) -> None:
        """Push every later slot back (after a 429 with ``Retry-After``)."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)
