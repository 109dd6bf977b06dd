"""The systems an evaluation compares, and running rows through them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from eval.sampling import Row
from fallback_models.registry import MODELS
from llm_router.chain import Chain, build_chain
from llm_router.classifier import Classifier
from llm_router.errors import ClassifierError, RouterError, reason_of, spent_by
from llm_router.llm.budget import Budget
from llm_router.llm.ratelimit import RateLimiter
from llm_router.router import Router
from llm_router.schemas import Classification, Usage
from llm_router.settings import Settings

logger = logging.getLogger(__name__)

LLM_STRATEGIES = ("llm", "shortlist", "cascade")  # the LLM used each way, without fallback
ALL_SYSTEMS = ("router", *LLM_STRATEGIES, *MODELS.kinds)
DEFAULT_SYSTEMS = ("router", *LLM_STRATEGIES, *MODELS.trained)


@dataclass
class RowResult:
    """What one system said about one row."""

    row_id: str
    truth: str
    label: str | None
    source: str | None
    cached: bool
    reason: str | None  # fallback reason (router) or failure reason (others)
    latency_ms: float
    candidates: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    requests: int = 0
    decision: str | None = None
    shortlist: list[str] | None = None
    listed: frozenset[str] = frozenset()
    confidence: float | None = None  # calibrated P(label right); None when unanswered
    followed: str | None = None  # whose answer a combination kept

    @property
    def reached_llm(self) -> bool:
        """The row was put to the LLM (sent, or answered from the LLM's cache)."""
        return self.requests > 0 or (self.cached and self.source == "llm")

    @classmethod
    def of(cls, row: Row, result: Classification, latency_ms: float) -> RowResult:
        usage = result.usage
        return cls(
            row_id=row.paper.id,
            truth=row.truth,
            label=result.label,
            source=result.source,
            cached=result.cached,
            reason=result.fallback_reason,
            latency_ms=latency_ms,
            candidates=[c.label for c in result.candidates],
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cost_usd=(usage.cost_usd or 0.0) if usage else 0.0,
            requests=usage.requests if usage else 0,
            decision=result.decision,
            shortlist=result.shortlist,
            listed=row.listed,
            confidence=result.confidence,
            followed=result.followed,
        )

    @classmethod
    def failed(
        cls, row: Row, reason: str, latency_ms: float, spent: Usage | None = None
    ) -> RowResult:
        """A row no classifier answered; ``spent`` is what its paid attempts cost, which
        counts in every figure (tokens, cost, per-row and per-1k-row figures)."""
        return cls(
            row.paper.id,
            row.truth,
            None,
            None,
            False,
            reason,
            latency_ms,
            requests=spent.requests if spent else 0,
            prompt_tokens=spent.prompt_tokens if spent else 0,
            completion_tokens=spent.completion_tokens if spent else 0,
            cost_usd=(spent.cost_usd or 0.0) if spent else 0.0,
            listed=row.listed,
        )


@dataclass
class System:
    """A named way of classifying: either runnable, or unavailable with a reason."""

    name: str
    classifier: Classifier | None = None
    unavailable: str | None = None
    uses_llm: bool = False
    batch: Callable[[Sequence[str]], list[Classification]] | None = None


def build_systems(
    names: Sequence[str], settings: Settings, budget: Budget, limiter: RateLimiter
) -> tuple[list[System], Chain]:
    """Construct each requested system from one chain (the same LLM link, cache, breaker
    and local models as the router); one that cannot run says why."""
    chain = build_chain(settings, budget=budget, limiter=limiter)
    systems: list[System] = []
    for name in names:
        if name in chain.local:
            try:
                model = chain.local[name].get()
            except ClassifierError as exc:
                systems.append(System(name, unavailable=f"{exc.reason}: {exc.args[0]}"))
                continue
            systems.append(System(name, model, batch=getattr(model, "classify_batch", None)))
        elif name in LLM_STRATEGIES:
            if settings.api_key is None:
                systems.append(System(name, unavailable="no_api_key: set OPENROUTER_API_KEY"))
            else:
                # The LLM alone: its answers are not combined with the local model's.
                head = chain.strategy_classifier(name, combine=False)  # type: ignore[arg-type]
                router = Router([head], max_input_chars=settings.max_input_chars, strategy=name)
                systems.append(System(name, router, uses_llm=True))
        elif name == "router":
            router = Router(
                chain.classifiers(),
                max_input_chars=settings.max_input_chars,
                strategy=settings.strategy,
            )
            systems.append(System(name, router, uses_llm=settings.api_key is not None))
    return systems, chain


def run_local(system: System, rows: Sequence[Row], batch_size: int = 256) -> list[RowResult]:
    """No network: a local model in batches, or a router whose chain has no LLM. A row that
    nothing could answer is counted as failed, with its reason."""
    assert system.classifier is not None
    outcomes: list[RowResult] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        texts = [r.paper.text for r in chunk]
        results: Sequence[Classification | Exception]
        if system.batch is not None:
            results = system.batch(texts)
        elif isinstance(system.classifier, Router):
            results = system.classifier.classify_many(texts, concurrency=1, return_exceptions=True)
        else:
            results = [_classify_or_error(system.classifier, t) for t in texts]
        for row, result in zip(chunk, results, strict=True):
            if isinstance(result, Exception):
                outcomes.append(RowResult.failed(row, reason_of(result), 0.0, spent_by(result)))
            else:
                outcomes.append(RowResult.of(row, result, result.latency_ms))
    return outcomes


def _classify_or_error(classifier: Classifier, text: str) -> Classification | Exception:
    try:
        return classifier.classify(text)
    except RouterError as exc:
        return exc


def run_concurrent(
    system: System,
    rows: Sequence[Row],
    concurrency: int,
    on_done: Callable[[RowResult], None],
    stop: threading.Event,
) -> list[RowResult]:
    """A system that may call the endpoint: ``concurrency`` rows at a time, in row order in
    the result. Ctrl-C sets ``stop``: rows not yet started are skipped, rows in flight finish
    (their answers are cached), and the partial result is returned."""
    assert system.classifier is not None
    classifier = system.classifier

    def one(row: Row) -> RowResult | None:
        if stop.is_set():
            return None
        started = time.perf_counter()
        try:
            result = classifier.classify(row.paper.text)
        except (RouterError, TypeError, ValueError) as exc:
            latency_ms = (time.perf_counter() - started) * 1000
            return RowResult.failed(row, reason_of(exc), latency_ms, spent_by(exc))
        return RowResult.of(row, result, (time.perf_counter() - started) * 1000)

    results: dict[int, RowResult] = {}
    pool = ThreadPoolExecutor(
        max_workers=max(1, concurrency), thread_name_prefix=f"eval-{system.name}"
    )
    try:
        futures: dict[Future[RowResult | None], int] = {
            pool.submit(one, r): i for i, r in enumerate(rows)
        }
        for future in as_completed(futures):
            outcome = future.result()
            if outcome is not None:
                results[futures[future]] = outcome
                on_done(outcome)
    except KeyboardInterrupt:
        stop.set()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for future, i in futures.items():  # rows that were in flight at Ctrl-C finished meanwhile
        if i not in results and future.done() and not future.cancelled():
            late = future.result()
            if late is not None:
                results[i] = late
    return [results[i] for i in sorted(results)]
