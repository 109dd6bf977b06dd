"""Router: tries its classifiers in order; route() and aroute() for one-off calls."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Literal, overload

from llm_router.chain import LazyClassifier, Unavailable, build_chain, llm_classifier
from llm_router.classifier import Classifier
from llm_router.errors import AllClassifiersFailed, ClassifierError, RouterError
from llm_router.inputs import prepare_text
from llm_router.llm.budget import Budget
from llm_router.llm.ratelimit import RateLimiter
from llm_router.reasons import Decision, Reason
from llm_router.schemas import Classification, Usage
from llm_router.settings import Settings

__all__ = ["LazyClassifier", "Router", "Unavailable", "aroute", "llm_classifier", "route"]

logger = logging.getLogger(__name__)

# Reasons that describe a standing condition rather than an incident: logged once, when
# the chain is built or the model is first loaded, not for every text.
_QUIET_REASONS = frozenset(
    {Reason.NO_API_KEY, Reason.MISSING_ARTIFACTS, Reason.MISSING_DEPENDENCY, Reason.CIRCUIT_OPEN}
)


class Router:
    """Classifies a text with the first classifier of the chain that can answer."""

    name = "router"

    def __init__(
        self,
        classifiers: Sequence[Classifier],
        *,
        max_input_chars: int = 6000,
        strategy: str | None = None,
    ) -> None:
        self.classifiers = list(classifiers)
        self.max_input_chars = max_input_chars
        self.strategy = strategy  # stamped on answers whose classifier did not say
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        budget: Budget | None = None,
        limiter: RateLimiter | None = None,
    ) -> Router:
        """The default chain: cached LLM, then the local models in ``settings.fallbacks``."""
        settings = settings or Settings()
        chain = build_chain(settings, budget=budget, limiter=limiter)
        return cls(
            chain.classifiers(),
            max_input_chars=settings.max_input_chars,
            strategy=settings.strategy,
        )

    def classify(self, text: str) -> Classification:
        """Classify one text.

        Raises:
            TypeError: ``text`` is not a str.
            ValueError: ``text`` is empty or whitespace only.
            AllClassifiersFailed: no classifier in the chain could answer.
        """
        return self._classify(prepare_text(text, self.max_input_chars))

    def _classify(self, text: str) -> Classification:
        started = time.perf_counter()
        errors: list[ClassifierError] = []
        for classifier in self.classifiers:
            try:
                result = classifier.classify(text)
            except ClassifierError as exc:
                self._log_failure(classifier, text, exc)
                errors.append(exc)
                continue
            return self._finish(result, errors, started)
        raise AllClassifiersFailed(errors)

    def _log_failure(self, classifier: Classifier, text: str, exc: ClassifierError) -> None:
        level = logging.DEBUG if exc.reason in _QUIET_REASONS else logging.WARNING
        logger.log(level, "classifier %s failed on %d chars: %s", classifier.name, len(text), exc)

    def _finish(
        self, result: Classification, errors: list[ClassifierError], started: float
    ) -> Classification:
        """Stamp latency, strategy and (after failures) the fallback reason and spend."""
        update: dict[str, object] = {"latency_ms": (time.perf_counter() - started) * 1000}
        if result.strategy is None and self.strategy is not None:
            update["strategy"] = self.strategy
        if errors:
            update["fallback_reason"] = errors[0].reason
            update["decision"] = Decision.FALLBACK
            spent = _spent(errors)
            if spent is not None:  # what the failed LLM attempts cost, kept with the row
                update["usage"] = spent if result.usage is None else spent + result.usage
        return result.model_copy(update=update)

    def classify_batch(
        self, texts: Sequence[object], *, concurrency: int = 8
    ) -> list[Classification | RouterError | TypeError | ValueError]:
        """Classify ``texts`` stage by stage: each classifier of the chain gets every text
        the ones before it could not answer, at once.

        A classifier with ``classify_batch`` (the local models) answers its texts in one
        vectorised call; others (the LLM) take them ``concurrency`` at a time. The answers
        are those :meth:`classify` gives, and a row that could not be answered (or a bad
        input) holds its exception in place, as with ``classify_many(...,
        return_exceptions=True)``. For corpora: far faster than one text at a time when a
        local model answers.
        """
        started = time.perf_counter()
        results: list[Classification | RouterError | TypeError | ValueError | None] = []
        pending: list[tuple[int, str]] = []
        for i, text in enumerate(texts):
            try:
                pending.append((i, prepare_text(text, self.max_input_chars)))
                results.append(None)
            except (TypeError, ValueError) as exc:
                results.append(exc)
        errors: dict[int, list[ClassifierError]] = {i: [] for i, _ in pending}
        for classifier in self.classifiers:
            if not pending:
                break
            answers = self._stage(classifier, [t for _, t in pending], concurrency)
            still: list[tuple[int, str]] = []
            for (i, text), answer in zip(pending, answers, strict=True):
                if isinstance(answer, ClassifierError):
                    self._log_failure(classifier, text, answer)
                    errors[i].append(answer)
                    still.append((i, text))
                else:
                    results[i] = self._finish(answer, errors[i], started)
            pending = still
        for i, _ in pending:
            results[i] = AllClassifiersFailed(errors[i])
        return [r for r in results if r is not None]

    def _stage(
        self, classifier: Classifier, texts: list[str], concurrency: int
    ) -> list[Classification | ClassifierError]:
        standing = getattr(classifier, "unavailable", None)
        if isinstance(standing, ClassifierError):  # e.g. no API key: nothing to try
            return [standing] * len(texts)
        batch = getattr(classifier, "classify_batch", None)
        if callable(batch):
            try:
                answered: list[Classification] = batch(texts)
                return list(answered)
            except ClassifierError as exc:  # the model cannot answer at all
                return [exc] * len(texts)

        def one(text: str) -> Classification | ClassifierError:
            try:
                return classifier.classify(text)
            except ClassifierError as exc:
                return exc

        if concurrency <= 1 or len(texts) <= 1:
            return [one(t) for t in texts]
        with ThreadPoolExecutor(max_workers=min(concurrency, len(texts))) as pool:
            return list(pool.map(one, texts))

    @overload
    def classify_many(
        self,
        texts: Iterable[object],
        *,
        concurrency: int = ...,
        return_exceptions: Literal[False] = ...,
    ) -> list[Classification]: ...

    @overload
    def classify_many(
        self, texts: Iterable[object], *, concurrency: int = ..., return_exceptions: Literal[True]
    ) -> list[Classification | RouterError | TypeError | ValueError]: ...

    def classify_many(
        self, texts: Iterable[object], *, concurrency: int = 8, return_exceptions: bool = False
    ) -> list[Classification] | list[Classification | RouterError | TypeError | ValueError]:
        """Classify many texts, ``concurrency`` at a time; results keep the input order.

        With ``return_exceptions=False`` every text is validated before anything is sent (a
        bad one raises and costs nothing), and a row no classifier can answer raises
        :class:`AllClassifiersFailed`. With ``True`` (as :func:`asyncio.gather`), such a row
        holds its exception in place and every other row is still answered.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        cleaned: list[str | TypeError | ValueError] = []
        for i, text in enumerate(texts):
            try:
                cleaned.append(prepare_text(text, self.max_input_chars))
            except (TypeError, ValueError) as exc:
                if not return_exceptions:
                    raise type(exc)(f"texts[{i}]: {exc}") from None
                cleaned.append(exc)

        def one(item: str | TypeError | ValueError) -> Classification | RouterError | Exception:
            if isinstance(item, Exception):
                return item
            if not return_exceptions:
                return self._classify(item)
            try:
                return self._classify(item)
            except RouterError as exc:
                return exc

        if concurrency == 1 or len(cleaned) <= 1:
            results = [one(item) for item in cleaned]
        else:
            with ThreadPoolExecutor(max_workers=min(concurrency, len(cleaned))) as pool:
                results = list(pool.map(one, cleaned))
        return results  # type: ignore[return-value]

    async def aclassify(self, text: str) -> Classification:
        """Async :meth:`classify`: runs in the router's worker threads, sharing its limits."""
        clean = prepare_text(text, self.max_input_chars)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(), self._classify, clean)

    def close(self) -> None:
        """Close HTTP connections, the disk cache and worker threads (reopened on next use)."""
        for classifier in self.classifiers:
            close = getattr(classifier, "close", None)
            if callable(close):
                close()
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False)
                self._executor = None

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pool(self) -> ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="llm-router")
            return self._executor


def _spent(errors: list[ClassifierError]) -> Usage | None:
    usages = [e.usage for e in errors if e.usage is not None and e.usage.requests]
    if not usages:
        return None
    total = Usage()
    for usage in usages:
        total = total + usage
    return total


_ROUTERS_MAX = 8
_routers: OrderedDict[Settings, Router] = OrderedDict()
_in_flight: Counter[int] = Counter()  # id(router) → route() calls using it now
_retired: dict[int, Router] = {}  # evicted while in use: closed by the last call to finish
_routers_lock = threading.Lock()


@contextmanager
def _borrowed(settings: Settings) -> Iterator[Router]:
    """The router for ``settings``, built once and held for one call. The least recently used
    of more than ``_ROUTERS_MAX`` is dropped, and closed once no call is using it."""
    with _routers_lock:
        router = _routers.get(settings)
        if router is not None:
            _routers.move_to_end(settings)
            _in_flight[id(router)] += 1
    if router is None:
        built = Router.from_settings(settings)  # outside the lock: it may load models
        evicted: list[Router] = []
        with _routers_lock:
            router = _routers.setdefault(settings, built)
            _routers.move_to_end(settings)
            _in_flight[id(router)] += 1
            while len(_routers) > _ROUTERS_MAX:
                evicted.append(_routers.popitem(last=False)[1])
            if router is not built:
                evicted.append(built)  # another thread built the same one first
            idle = [old for old in evicted if not _in_flight[id(old)]]
            _retired.update((id(old), old) for old in evicted if _in_flight[id(old)])
        for old in idle:
            old.close()
    try:
        yield router
    finally:
        with _routers_lock:
            _in_flight[id(router)] -= 1
            last = not _in_flight[id(router)]
            if last:
                del _in_flight[id(router)]
            retired = _retired.pop(id(router), None) if last else None
        if retired is not None:
            retired.close()


def route(text: str, *, settings: Settings | None = None) -> Classification:
    """Classify one abstract with the default chain (built once per distinct settings)."""
    with _borrowed(settings or Settings()) as router:
        return router.classify(text)


async def aroute(text: str, *, settings: Settings | None = None) -> Classification:
    """Async :func:`route`; the router is built off the event loop on first use."""
    borrowed = _borrowed(settings or Settings())
    router = await asyncio.to_thread(borrowed.__enter__)
    try:
        return await router.aclassify(text)
    finally:
        borrowed.__exit__(None, None, None)
