"""The systems an evaluation compares, and running rows through them."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from eval.sampling import Row
from llm_router.budget import Budget
from llm_router.classifier import Classifier
from llm_router.errors import AllClassifiersFailed, ClassifierError
from llm_router.labels import LabelSet
from llm_router.ratelimit import RateLimiter
from llm_router.router import LazyClassifier, Router, llm_classifier
from llm_router.schemas import Classification
from llm_router.settings import Settings

logger = logging.getLogger(__name__)

ALL_SYSTEMS = ("router", "llm", "bert", "tfidf")


@dataclass
class Outcome:
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

    @classmethod
    def of(cls, row: Row, result: Classification, latency_ms: float) -> Outcome:
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
        )

    @classmethod
    def failed(cls, row: Row, reason: str, latency_ms: float) -> Outcome:
        return cls(row.paper.id, row.truth, None, None, False, reason, latency_ms)


@dataclass
class System:
    """A named way of classifying: either runnable, or unavailable with a reason."""

    name: str
    classifier: Classifier | None = None
    unavailable: str | None = None
    uses_llm: bool = False
    batch: Callable[[Sequence[str]], list[Classification]] | None = None


def build_systems(
    names: Sequence[str], settings: Settings, labels: LabelSet, budget: Budget, limiter: RateLimiter
) -> list[System]:
    """Construct each requested system; one that cannot run says why."""
    from fallback_models.artifacts import load_local_classifier

    systems: list[System] = []
    local = {
        kind: LazyClassifier(kind, functools.partial(load_local_classifier, kind, settings, labels))
        for kind in ("bert", "tfidf")
    }
    for name in names:
        if name in local:
            try:
                model = local[name].get()
            except ClassifierError as exc:
                systems.append(System(name, unavailable=f"{exc.reason}: {exc.args[0]}"))
                continue
            systems.append(System(name, model, batch=getattr(model, "classify_batch", None)))
        elif name == "llm":
            if settings.api_key is None:
                systems.append(System(name, unavailable="no_api_key: set OPENROUTER_API_KEY"))
            else:
                llm = llm_classifier(settings, labels, budget, limiter)
                systems.append(
                    System(
                        name, Router([llm], max_input_chars=settings.max_input_chars), uses_llm=True
                    )
                )
        elif name == "router":
            chain: list[Classifier] = [llm_classifier(settings, labels, budget, limiter)]
            chain += [local[k] for k in settings.fallbacks]
            systems.append(
                System(
                    name,
                    Router(chain, max_input_chars=settings.max_input_chars),
                    uses_llm=settings.api_key is not None,
                )
            )
    return systems


def run_local(system: System, rows: Sequence[Row], batch_size: int = 256) -> list[Outcome]:
    """A local model: batched, no network."""
    assert system.classifier is not None
    outcomes: list[Outcome] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        texts = [r.paper.text for r in chunk]
        if system.batch is not None:
            results = system.batch(texts)
        else:
            results = [system.classifier.classify(t) for t in texts]
        outcomes += [Outcome.of(r, c, c.latency_ms) for r, c in zip(chunk, results, strict=True)]
    return outcomes


def run_concurrent(
    system: System,
    rows: Sequence[Row],
    concurrency: int,
    on_done: Callable[[Outcome], None],
    stop: threading.Event,
) -> list[Outcome]:
    """A system that may call the endpoint: ``concurrency`` rows at a time, in row order in
    the result. Ctrl-C sets ``stop``: rows not yet started are skipped, rows in flight finish
    (their answers are cached), and the partial result is returned."""
    assert system.classifier is not None
    classifier = system.classifier

    def one(row: Row) -> Outcome | None:
        if stop.is_set():
            return None
        started = time.perf_counter()
        try:
            result = classifier.classify(row.paper.text)
        except AllClassifiersFailed as exc:
            reason = exc.errors[0].reason if exc.errors else "failed"
            return Outcome.failed(row, reason, (time.perf_counter() - started) * 1000)
        except ClassifierError as exc:
            return Outcome.failed(row, exc.reason, (time.perf_counter() - started) * 1000)
        return Outcome.of(row, result, (time.perf_counter() - started) * 1000)

    results: dict[int, Outcome] = {}
    pool = ThreadPoolExecutor(
        max_workers=max(1, concurrency), thread_name_prefix=f"eval-{system.name}"
    )
    try:
        futures: dict[Future[Outcome | None], int] = {
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
