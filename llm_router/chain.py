"""The chain of classifiers a Router tries, built in one place for the router and the eval."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llm_router.classifier import Classifier
from llm_router.errors import ClassifierError, LLMUnavailable
from llm_router.labels import LabelSet
from llm_router.llm.budget import Budget
from llm_router.llm.cache import CachedClassifier, DiskCache
from llm_router.llm.ratelimit import RateLimiter
from llm_router.prompts import load_prompt
from llm_router.reasons import Reason
from llm_router.registry import local_models
from llm_router.schemas import Classification
from llm_router.settings import CASCADE_THRESHOLD, Settings
from llm_router.strategy import StrategyClassifier, StrategyName
from llm_router.voter import Calibration

logger = logging.getLogger(__name__)


class Unavailable:
    """A chain link that cannot answer at all (e.g. no API key): fails fast with its reason."""

    def __init__(self, error: ClassifierError) -> None:
        self.name = error.classifier
        self.error = error

    def classify(self, text: str, **_options: object) -> Classification:  # noqa: ARG002
        raise self.error

    @property
    def unavailable(self) -> ClassifierError:
        """Why this link cannot answer any text (the router skips it for a whole batch)."""
        return self.error


class LazyClassifier:
    """Loads a local classifier on first use, and looks again when that may change things.

    A failed load is remembered for ``retry_s`` (doubling after each failure, up to
    ``max_retry_s``), then tried again: a service started before its model was trained picks
    it up once it appears. ``version`` (the model files' identity) is read at most every
    ``check_s``; when it changes, the new model is loaded and swapped in for the next calls,
    the old one answering until then. A model whose files fail verification (half replaced,
    say) is never served: the last good one stays, or the load error is raised.
    """

    def __init__(
        self,
        name: str,
        load: Callable[[], Classifier],
        *,
        version: Callable[[], object] | None = None,
        sha256: Callable[[], str | None] | None = None,
        retry_s: float = 5.0,
        max_retry_s: float = 300.0,
        check_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._load = load
        self._version = version
        self._sha256 = sha256
        self.model_sha256: str | None = None  # the loaded model's (calibration profiles)
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.check_s = check_s
        self._clock = clock
        self._inner: Classifier | None = None
        self._loaded_version: object = None
        self._error: ClassifierError | None = None
        self._failures = 0
        self._next_try = 0.0
        self._next_check = 0.0
        self._lock = threading.Lock()

    def get(self) -> Classifier:
        now = self._clock()
        inner = self._inner
        if inner is not None and (self._version is None or now < self._next_check):
            return inner
        with self._lock:
            if self._inner is not None and self._version is not None and now >= self._next_check:
                self._next_check = now + self.check_s
                if self._version() != self._loaded_version:
                    self._try_load(now)  # keeps the old model when the new one fails
            elif self._inner is None and (self._error is None or now >= self._next_try):
                self._try_load(now)
            if self._inner is not None:
                return self._inner
            assert self._error is not None
            raise self._error

    def _try_load(self, now: float) -> None:
        version = self._version() if self._version is not None else None
        try:
            self._inner = self._load()
        except ClassifierError as exc:
            self._failures += 1
            wait = min(self.max_retry_s, self.retry_s * 2 ** (self._failures - 1))
            self._next_try = now + wait
            if self._error is None or exc.reason != self._error.reason:
                logger.warning(
                    "fallback %s skipped: %s (looking again in %.0f s)", self.name, exc, wait
                )
            self._error = exc
            return
        if self._error is not None or self._loaded_version is not None:
            logger.info("fallback %s loaded", self.name)
        self._error, self._failures = None, 0
        self._loaded_version = version
        self.model_sha256 = self._sha256() if self._sha256 is not None else None
        self._next_check = now + self.check_s

    def classify(self, text: str) -> Classification:
        return self.get().classify(text)

    def classify_batch(self, texts: Sequence[str]) -> list[Classification]:
        """The model's vectorised ``classify_batch`` when it has one, else one at a time."""
        model = self.get()
        batch = getattr(model, "classify_batch", None)
        if callable(batch):
            answered: list[Classification] = batch(texts)
            return answered
        return [model.classify(t) for t in texts]


@dataclass
class Chain:
    """The LLM link and the local models, by name, in the order the router tries them.

    The router's first link is the LLM used as ``strategy`` says
    (:meth:`strategy_classifier`); the evaluation builds every strategy from the same link,
    so they share its cache, budget, rate limit and circuit breaker.
    """

    llm: Classifier
    local: dict[str, LazyClassifier] = field(default_factory=dict)
    order: tuple[str, ...] = ()
    labels: LabelSet | None = None
    strategy: StrategyName = "llm"
    shortlist_k: int = 8
    cascade_threshold: float = CASCADE_THRESHOLD
    threshold_fixed: bool = True  # LLM_ROUTER_CASCADE_THRESHOLD was set: profiles keep it
    settings: Settings | None = None  # for the calibration profiles (None: none used)
    _calibrations: dict[str, Calibration] = field(default_factory=dict)

    def strategy_classifier(
        self, strategy: StrategyName | None = None, *, combine: bool = True
    ) -> StrategyClassifier:
        """The LLM link used as ``strategy`` (default: the configured one); with
        ``combine=False``, its answers are not combined with the local model's (the LLM
        alone, with its calibrated confidence)."""
        strategy = strategy or self.strategy
        return StrategyClassifier(
            self.llm,  # type: ignore[arg-type]
            [self.local[name] for name in self.order],
            strategy=strategy,
            k=self.shortlist_k,
            threshold=self.cascade_threshold,
            calibration=self.calibration(strategy),
            n_labels=len(self.labels.labels) if self.labels is not None else None,
            combine=combine,
            threshold_fixed=self.threshold_fixed,
        )

    def calibration(self, strategy: StrategyName | None = None) -> Calibration | None:
        """The profile finder for ``strategy`` (one per strategy, shared by its links)."""
        strategy = strategy or self.strategy
        settings = self.settings
        if settings is None or not settings.calibration:
            return None
        if strategy not in self._calibrations:
            self._calibrations[strategy] = Calibration(
                settings.model_dir,
                model=settings.model,
                prompt_version=prompt_version(settings, strategy),
                strategy=strategy,
            )
        return self._calibrations[strategy]

    def classifiers(self) -> list[Classifier]:
        return [self.strategy_classifier(), *(self.local[name] for name in self.order)]


def build_chain(
    settings: Settings,
    *,
    budget: Budget | None = None,
    limiter: RateLimiter | None = None,
) -> Chain:
    """The default chain: the (cached) LLM, then the local models in ``settings.fallbacks``.

    With ``LLM_ROUTER_FALLBACKS`` unset, the trained kinds go in the registry's order, except
    that one whose manifest shows a lower test top-1 than another installed one (same split)
    does not go first. Every kind of the registry is offered (loaded lazily, on first use) so
    an evaluation can run each on its own; only those in the order are in the router's chain.
    """
    order, labels = local_order(settings)
    models = local_models()
    local: dict[str, LazyClassifier] = {}

    def sibling(name: str) -> Classifier:
        return local[name].get()

    if models is not None:
        for kind in models.kinds:
            load = functools.partial(models.load, kind, settings, labels, sibling)
            version = functools.partial(models.version, settings.model_dir, kind)
            sha256 = functools.partial(models.sha256, settings.model_dir, kind)
            local[kind] = LazyClassifier(
                kind, load, version=version, sha256=sha256, retry_s=settings.model_retry_s
            )
    return Chain(
        llm=llm_classifier(settings, labels, budget, limiter),
        local=local,
        order=order,
        labels=labels,
        strategy=settings.strategy,
        shortlist_k=settings.shortlist_k,
        cascade_threshold=settings.cascade_threshold,
        threshold_fixed="cascade_threshold" in settings.model_fields_set,
        settings=settings,
    )


def prompt_version(settings: Settings, strategy: StrategyName) -> str:
    """The prompt(s) ``strategy`` asks with, as a calibration profile records them."""
    if strategy == "llm":
        return settings.prompt
    shortlist = (
        settings.shortlist_prompt if settings.shortlist_widen else settings.shortlist_strict_prompt
    )
    return f"{settings.prompt}+{shortlist}"


def local_order(settings: Settings) -> tuple[tuple[str, ...], LabelSet]:
    """The order the router tries its local models in, and the deployed label set (that of
    the first trained one). The router and the evaluation both read it here.

    With ``LLM_ROUTER_FALLBACKS`` unset, measured quality decides the order.
    """
    models = local_models()
    if models is None:
        return (), LabelSet.full_taxonomy()
    order = settings.fallbacks
    if order is None:
        order = models.default_order(settings.model_dir)
    return order, models.label_set(settings.model_dir, order)


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
                "no API key set (OPENROUTER_API_KEY or LLM_ROUTER_API_KEY)",
                reason=Reason.NO_API_KEY,
            )
        )
    from llm_router.llm.client import LLMClassifier  # imports openai: only when there is a key

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
