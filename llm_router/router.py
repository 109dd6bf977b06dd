"""Router: tries its classifiers in order; route() and aroute() for one-off calls."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from llm_router.budget import Budget
from llm_router.cache import CachedClassifier, DiskCache
from llm_router.classifier import Classifier
from llm_router.errors import AllClassifiersFailed, ClassifierError, LLMUnavailable
from llm_router.inputs import prepare_text
from llm_router.labels import LabelSet
from llm_router.llm import LLMClassifier
from llm_router.prompts import load_prompt
from llm_router.ratelimit import RateLimiter
from llm_router.schemas import Classification
from llm_router.settings import Settings

logger = logging.getLogger(__name__)

# Reasons that describe a standing condition rather than an incident: logged once, when
# the chain is built or the model is first loaded, not for every text.
_QUIET_REASONS = frozenset({"no_api_key", "missing_artifacts", "missing_dependency"})


class Unavailable:
    """A chain link that cannot answer at all (e.g. no API key): fails fast with its reason."""

    def __init__(self, error: ClassifierError) -> None:
        self.name = error.classifier
        self.error = error

    def classify(self, text: str) -> Classification:  # noqa: ARG002
        raise self.error


class LazyClassifier:
    """Loads a local classifier on first use, once; a load failure is remembered."""

    def __init__(self, name: str, load: Callable[[], Classifier]) -> None:
        self.name = name
        self._load = load
        self._inner: Classifier | None = None
        self._error: ClassifierError | None = None
        self._lock = threading.Lock()

    def get(self) -> Classifier:
        if self._inner is None:
            with self._lock:
                if self._inner is None and self._error is None:
                    try:
                        self._inner = self._load()
                    except ClassifierError as exc:
                        logger.warning("fallback %s skipped: %s", self.name, exc)
                        self._error = exc
        if self._error is not None:
            raise self._error
        assert self._inner is not None
        return self._inner

    def classify(self, text: str) -> Classification:
        return self.get().classify(text)


class Router:
    """Classifies a text with the first classifier of the chain that can answer."""

    name = "router"

    def __init__(self, classifiers: Sequence[Classifier], *, max_input_chars: int = 6000) -> None:
        self.classifiers = list(classifiers)
        self.max_input_chars = max_input_chars
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
        from fallback_models.artifacts import deployed_label_set, load_local_classifier

        labels = deployed_label_set(settings.model_dir, settings.fallbacks)
        classifiers: list[Classifier] = [llm_classifier(settings, labels, budget, limiter)]
        for kind in settings.fallbacks:
            classifiers.append(
                LazyClassifier(
                    kind, functools.partial(load_local_classifier, kind, settings, labels)
                )
            )
        return cls(classifiers, max_input_chars=settings.max_input_chars)

    def classify(self, text: str) -> Classification:
        """Classify one text.

        Raises:
            TypeError: ``text`` is not a str.
            ValueError: ``text`` is empty or whitespace only.
            AllClassifiersFailed: no classifier in the chain could answer.
        """
        return self._classify(prepare_text(text, self.max_input_chars))

    def _classify(self, text: str) -> Classification:
        errors: list[ClassifierError] = []
        for classifier in self.classifiers:
            try:
                result = classifier.classify(text)
            except ClassifierError as exc:
                level = logging.DEBUG if exc.reason in _QUIET_REASONS else logging.WARNING
                logger.log(
                    level, "classifier %s failed on %d chars: %s", classifier.name, len(text), exc
                )
                errors.append(exc)
                continue
            if errors:
                result = result.model_copy(update={"fallback_reason": errors[0].reason})
            return result
        raise AllClassifiersFailed(errors)

    def classify_many(self, texts: Iterable[str], *, concurrency: int = 8) -> list[Classification]:
        """Classify many texts, ``concurrency`` at a time; results keep the input order.

        Every text is validated before anything is sent, so a bad one costs nothing.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        cleaned = []
        for i, text in enumerate(texts):
            try:
                cleaned.append(prepare_text(text, self.max_input_chars))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"texts[{i}]: {exc}") from None
        if concurrency == 1 or len(cleaned) <= 1:
            return [self._classify(text) for text in cleaned]
        with ThreadPoolExecutor(max_workers=min(concurrency, len(cleaned))) as pool:
            return list(pool.map(self._classify, cleaned))

    async def aclassify(self, text: str) -> Classification:
        """Async :meth:`classify`: runs in the router's worker threads, sharing its limits."""
        clean = prepare_text(text, self.max_input_chars)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(), self._classify, clean)

    def close(self) -> None:
        """Close HTTP connections, the disk cache and worker threads."""
        for classifier in self.classifiers:
            close = getattr(classifier, "close", None)
            if callable(close):
                close()
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pool(self) -> ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="llm-router")
            return self._executor


def llm_classifier(
    settings: Settings,
    labels: LabelSet,
    budget: Budget | None = None,
    limiter: RateLimiter | None = None,
) -> Classifier:
    """The LLM link of a chain: cached unless ``LLM_ROUTER_CACHE=off``, or Unavailable."""
    if settings.api_key is None:
        logger.warning(
            "no API key (OPENROUTER_API_KEY or LLM_ROUTER_API_KEY): the LLM is skipped and "
            "answers come from the local models"
        )
        return Unavailable(
            LLMUnavailable(
                "no API key set (OPENROUTER_API_KEY or LLM_ROUTER_API_KEY)", reason="no_api_key"
            )
        )
    llm = LLMClassifier(
        settings,
        labels,
        load_prompt(settings.prompt, settings.prompts_dir),
        limiter=limiter,
        budget=budget,
    )
    if not settings.cache:
        return llm
    return CachedClassifier(llm, DiskCache(settings.resolved_cache_dir()), frozenset(labels.labels))


@functools.lru_cache(maxsize=8)
def _default_router(settings: Settings) -> Router:
    return Router.from_settings(settings)


def route(text: str, *, settings: Settings | None = None) -> Classification:
    """Classify one abstract with the default chain (built once per distinct settings)."""
    return _default_router(settings or Settings()).classify(text)


async def aroute(text: str, *, settings: Settings | None = None) -> Classification:
    """Async :func:`route`."""
    return await _default_router(settings or Settings()).aclassify(text)
