"""Budget: requests, tokens and USD, reserved before a call and settled after it."""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

from llm_router.errors import BudgetExceeded

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Price:
    """USD per million prompt and completion tokens."""

    prompt_per_mtok: float
    completion_per_mtok: float

    def __post_init__(self) -> None:
        for value in (self.prompt_per_mtok, self.completion_per_mtok):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"a price must be a finite number ≥ 0, got {value}")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.prompt_per_mtok + completion_tokens * self.completion_per_mtok
        ) / 1e6


@dataclass
class Reservation:
    """What one request was allowed to spend; settled with the real figures afterwards."""

    tokens: int
    cost_usd: float
    blind: bool = False  # sent alone because no price and no real cost was known yet
    settled: bool = False


def trusted_cost(cost: float | None) -> float | None:
    """A reported cost, or ``None`` when it is missing, not finite or negative."""
    if cost is None or not math.isfinite(cost) or cost < 0:
        return None
    return cost


class Budget:
    """Limits shared by every thread of a run. ``None`` means unlimited.

    :meth:`reserve` is called before each HTTP attempt with an upper estimate of its tokens;
    a request that could go over a limit is never sent. :meth:`settle` swaps the estimate for
    what the endpoint reported, so the limits hold at any concurrency.

    A USD cap with a ``price`` reserves the priced token estimate. With an unknown price,
    requests go out one at a time until the endpoint reports a real cost (each waits for the
    one before to settle); after that each reservation is the highest cost seen, scaled up by
    tokens for a longer text, so concurrent requests cannot overshoot the cap. A reported
    cost that is missing, not finite or negative is never trusted: the request is settled at
    the priced tokens, or at its reservation. (Without a price, the first request's own cost
    is unknown until it comes back: only a price bounds that one.)
    """

    def __init__(
        self,
        max_requests: int | None = None,
        max_tokens: int | None = None,
        max_cost_usd: float | None = None,
        price: Price | None = None,
    ) -> None:
        self.price = price
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.max_cost_usd = max_cost_usd
        self.requests = 0
        self.tokens = 0
        self.cost_usd = 0.0  # settled costs plus what requests in flight have reserved
        self.spent_usd = 0.0  # settled costs only: money spent, which never goes down
        self.untrusted_costs = 0
        self._max_cost_seen: float | None = None
        self._max_cost_per_token = 0.0
        self._blind_in_flight = False
        self._warned = False
        self._lock = threading.Condition()

    def reserve(self, prompt_tokens: int, completion_tokens: int = 0) -> Reservation:
        """Claim one request and an upper estimate of its tokens (and their price).

        Raises:
            BudgetExceeded: the request would go over a limit; nothing was claimed.
        """
        tokens = prompt_tokens + completion_tokens
        with self._lock:
            blind = self._needs_blind_request()
            while blind and self._blind_in_flight:
                self._lock.wait()
                blind = self._needs_blind_request()
            if self.max_requests is not None and self.requests + 1 > self.max_requests:
                raise BudgetExceeded(f"request budget of {self.max_requests} spent")
            if self.max_tokens is not None and self.tokens + tokens > self.max_tokens:
                raise BudgetExceeded(f"token budget of {self.max_tokens} would be exceeded")
            cost = self._estimate(prompt_tokens, completion_tokens)
            if self.max_cost_usd is not None and self.cost_usd + cost > self.max_cost_usd:
                raise BudgetExceeded(f"cost budget of ${self.max_cost_usd:g} would be exceeded")
            self.requests += 1
            self.tokens += tokens
            self.cost_usd += cost
            self._blind_in_flight = self._blind_in_flight or blind
            return Reservation(tokens, cost, blind=blind)

    def settle(
        self,
        reservation: Reservation,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float | None,
    ) -> float:
        """Swap a reservation's estimate for what the endpoint reported (the request stays
        counted). Returns the cost that was counted for it."""
        reported = trusted_cost(cost_usd)
        if cost_usd is not None and reported is None:
            self._warn_once(f"endpoint reported a cost of {cost_usd!r}: not trusted")
        with self._lock:
            if reservation.settled:
                return 0.0
            if reported is not None:
                cost = reported
                self._max_cost_seen = max(self._max_cost_seen or 0.0, reported)
                if reservation.tokens > 0:  # per *estimated* token: estimates scale alike
                    self._max_cost_per_token = max(
                        self._max_cost_per_token, reported / reservation.tokens
                    )
            elif self.price is not None:
                cost = self.price.cost(prompt_tokens, completion_tokens)
            else:
                cost = reservation.cost_usd
                if reservation.blind:
                    self._warn_once(
                        "the endpoint reports no usable cost and no price is known: requests "
                        "under the USD cap go one at a time (give a price, e.g. "
                        "--price-per-mtok, 0 for a free local server)"
                    )
            self.untrusted_costs += cost_usd is not None and reported is None
            return self._close(reservation, prompt_tokens + completion_tokens, cost)

    def settle_failed(self, reservation: Reservation, *, billed: bool) -> float:
        """Settle an attempt that brought back no usable body. ``billed=False`` (an HTTP
        error status) counts the request at no cost; otherwise it may have been billed
        (timeout, dropped connection, malformed body) and keeps its reservation."""
        with self._lock:
            if reservation.settled:
                return 0.0
            if billed:
                return self._close(reservation, reservation.tokens, reservation.cost_usd)
            return self._close(reservation, 0, 0.0)

    def release(self, reservation: Reservation) -> None:
        """Give a reservation back whole: the request was never sent."""
        with self._lock:
            if reservation.settled:
                return
            self.requests -= 1
            self._close(reservation, 0, 0.0)

    def snapshot(self) -> dict[str, float | int | None]:
        with self._lock:
            return {
                "requests": self.requests,
                "tokens": self.tokens,
                "cost_usd": round(self.cost_usd, 6),
                "spent_usd": round(self.spent_usd, 6),
                "reserved_usd": round(self.cost_usd - self.spent_usd, 6),
                "max_requests": self.max_requests,
                "max_tokens": self.max_tokens,
                "max_cost_usd": self.max_cost_usd,
                "untrusted_costs": self.untrusted_costs,
            }

    # -- internals (called with the lock held) ----------------------------------------------
    def _needs_blind_request(self) -> bool:
        return self.max_cost_usd is not None and self.price is None and self._max_cost_seen is None

    def _estimate(self, prompt_tokens: int, completion_tokens: int) -> float:
        priced = 0.0 if self.price is None else self.price.cost(prompt_tokens, completion_tokens)
        if self._max_cost_seen is None:
            return priced
        # Costs the endpoint really reported outrank a price that turned out too low.
        by_tokens = self._max_cost_per_token * (prompt_tokens + completion_tokens)
        return max(priced, self._max_cost_seen, by_tokens)

    def _close(self, reservation: Reservation, tokens: int, cost: float) -> float:
        reservation.settled = True
        self.tokens += tokens - reservation.tokens
        self.cost_usd += cost - reservation.cost_usd
        self.spent_usd += cost
        if reservation.blind:
            self._blind_in_flight = False
            self._lock.notify_all()
        return cost

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(message)
