"""Budget: requests, tokens and USD, reserved before a call and settled after it."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from llm_router.errors import BudgetExceeded


@dataclass
class Reservation:
    """What one request was allowed to spend; settled with the real figures afterwards."""

    tokens: int
    cost_usd: float
    settled: bool = False


class Budget:
    """Limits shared by every thread of a run. ``None`` means unlimited.

    ``reserve`` is called before each HTTP attempt with an upper estimate; a request that
    could exceed a limit is never sent. ``settle`` replaces the estimate with what the
    endpoint reported, so the budget holds with any concurrency.
    """

    def __init__(
        self,
        max_requests: int | None = None,
        max_tokens: int | None = None,
        max_cost_usd: float | None = None,
        price_per_mtok: float = 0.0,
    ) -> None:
        self.price_per_mtok = price_per_mtok
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.max_cost_usd = max_cost_usd
        self.requests = 0
        self.tokens = 0
        self.cost_usd = 0.0
        self._lock = threading.Lock()

    def reserve(self, tokens: int) -> Reservation:
        """Claim one request and an upper estimate of its tokens (and their price).

        Raises:
            BudgetExceeded: the request would go over a limit; nothing was claimed.
        """
        cost_usd = tokens * self.price_per_mtok / 1e6
        with self._lock:
            if self.max_requests is not None and self.requests + 1 > self.max_requests:
                raise BudgetExceeded(f"request budget of {self.max_requests} spent")
            if self.max_tokens is not None and self.tokens + tokens > self.max_tokens:
                raise BudgetExceeded(f"token budget of {self.max_tokens} would be exceeded")
            if self.max_cost_usd is not None and self.cost_usd + cost_usd > self.max_cost_usd:
                raise BudgetExceeded(f"cost budget of ${self.max_cost_usd} would be exceeded")
            self.requests += 1
            self.tokens += tokens
            self.cost_usd += cost_usd
            return Reservation(tokens, cost_usd)

    def settle(self, reservation: Reservation, tokens: int, cost_usd: float | None) -> None:
        """Swap a reservation's estimate for the real usage (the request stays counted).

        ``cost_usd=None`` (the endpoint reported no cost) prices the tokens at
        ``price_per_mtok``.
        """
        if cost_usd is None:
            cost_usd = tokens * self.price_per_mtok / 1e6
        with self._lock:
            if reservation.settled:
                return
            reservation.settled = True
            self.tokens += tokens - reservation.tokens
            self.cost_usd += cost_usd - reservation.cost_usd

    def snapshot(self) -> dict[str, float | int | None]:
        with self._lock:
            return {
                "requests": self.requests,
                "tokens": self.tokens,
                "cost_usd": round(self.cost_usd, 6),
                "max_requests": self.max_requests,
                "max_tokens": self.max_tokens,
                "max_cost_usd": self.max_cost_usd,
            }
