"""A client-side requests-per-minute limit that holds across threads (and, with the Ray
engine, across processes), and honours ``Retry-After``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol


class Slots(Protocol):
    """Where request slots come from: a :class:`Schedule` in this process, or one shared by
    a cluster (the Ray engine keeps a Schedule in an actor)."""

    def reserve(self) -> float: ...

    def slow_down(self, seconds: float) -> None: ...


class Schedule:
    """Request slots ``60 / rpm`` seconds apart on ``clock``, with no burst.

    ``rpm=None`` means no spacing; :meth:`slow_down` (a ``Retry-After``) pushes every later
    slot back by at most ``max_pause_s``.
    """

    def __init__(
        self,
        rpm: float | None,
        *,
        max_pause_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rpm is not None and rpm <= 0:
            raise ValueError(f"rpm must be positive, got {rpm}")
        self.interval_s = 0.0 if rpm is None else 60.0 / rpm
        self.max_pause_s = max_pause_s
        self.clock = clock
        self._next = 0.0
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """The time (on ``clock``) at which the caller may send; the next slot moves on."""
        with self._lock:
            slot = max(self.clock(), self._next)
            self._next = slot + self.interval_s
        return slot

    def slow_down(self, seconds: float) -> None:
        """Push every later slot back by ``seconds`` (capped at ``max_pause_s``)."""
        pause = min(seconds, self.max_pause_s)
        with self._lock:
            self._next = max(self._next, self.clock() + pause)


class RateLimiter:
    """Waits for a slot of its :class:`Schedule` before each request.

    Each caller reserves the next free slot under the schedule's lock, then sleeps outside
    it, so many threads share one schedule. ``slots`` replaces the schedule (one a cluster
    shares); ``clock`` must be the one its slots are on, and ``sleep`` waits on that clock.
    """

    def __init__(
        self,
        rpm: float | None = None,
        *,
        max_pause_s: float = 60.0,
        slots: Slots | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.slots = slots or Schedule(rpm, max_pause_s=max_pause_s, clock=clock)
        self.clock = clock
        self.sleep = sleep

    @property
    def interval_s(self) -> float:
        return float(getattr(self.slots, "interval_s", 0.0))

    def acquire(self, abort: Callable[[], bool] | None = None) -> float:
        """Wait for this caller's slot; returns how long it waited, in seconds.

        ``abort`` is polled while waiting: when it turns true (the circuit breaker opened,
        say) the wait ends early and the slot is left unused.
        """
        slot = self.slots.reserve()
        wait = slot - self.clock()
        if wait > 0 and abort is None:
            self.sleep(wait)
        while abort is not None and not abort() and self.clock() < slot:
            self.sleep(min(0.05, max(0.0, slot - self.clock())))
        return max(0.0, wait)

    def slow_down(self, seconds: float) -> None:
        """Push every later slot back by ``seconds`` (capped by the schedule)."""
        self.slots.slow_down(seconds)
