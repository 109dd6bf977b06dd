"""Local model kinds, reached through one registry: the core never imports them by name.

A package of local models publishes one :class:`LocalModels` object under the entry-point
group ``llm_router.local_models`` (``fallback_models`` does, in ``pyproject.toml``), as
simonw/llm's plugins do; the chain, the settings, the page and the evaluation ask it which
kinds exist, in what order to try them, and how to load one. Without such a package the
router has no local model: the LLM alone answers, in the full arXiv label space.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from llm_router.classifier import Classifier
    from llm_router.labels import LabelSet
    from llm_router.settings import Settings

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "llm_router.local_models"


class LocalModels(Protocol):
    """What the core needs to know of the local models."""

    kinds: tuple[str, ...]  # every kind, trained or composed (``ensemble``)
    trained: tuple[str, ...]  # kinds trained into ``<model_dir>/<kind>/``; the default chain

    def load(
        self,
        kind: str,
        settings: Settings,
        labels: LabelSet,
        sibling: Callable[[str], Classifier],
    ) -> Classifier:
        """Load ``kind``, answering in ``labels``; ``sibling(name)`` gives another kind
        already loaded by the same chain (an ensemble's members).

        Raises:
            ModelNotAvailable: artifacts missing or refused, a dependency missing.
        """
        ...

    def available(self, model_dir: Path, kind: str) -> bool:
        """Whether ``kind`` is installed under ``model_dir`` (its manifest, or its members'),
        without loading anything."""
        ...

    def version(self, model_dir: Path, kind: str) -> object:
        """The identity of ``kind``'s files on disk (it changes when a model is replaced),
        cheap enough to read every few seconds."""
        ...

    def sha256(self, model_dir: Path, kind: str) -> str | None:
        """A digest of ``kind``'s files (None when not trained): calibration profiles name
        the local model they were fitted with by it."""
        ...

    def label_set(self, model_dir: Path, order: Sequence[str]) -> LabelSet:
        """The deployed label set: that of the first trained kind of ``order``."""
        ...

    def default_order(self, model_dir: Path) -> tuple[str, ...]:
        """The chain when ``LLM_ROUTER_FALLBACKS`` is unset: installed kinds, the one with
        the better measured test top-1 first."""
        ...


@functools.cache
def local_models() -> LocalModels | None:
    """The installed local models (the first entry point of the group), or None."""
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        found: LocalModels = entry.load()
        return found
    logger.warning(
        "no local models are installed (entry point group %s): the LLM alone answers",
        ENTRY_POINT_GROUP,
    )
    return None


def local_kinds() -> tuple[str, ...]:
    """Every local model kind the registry offers (empty without one)."""
    models = local_models()
    return models.kinds if models is not None else ()


def nothing_can_answer(settings: Settings, order: Sequence[str]) -> str | None:
    """Why no classifier of a chain could answer any text, when that is clear before a text
    is seen: no API key and none of ``order`` installed; else None."""
    if settings.api_key is not None:
        return None
    models = local_models()
    if models is not None and any(models.available(settings.model_dir, k) for k in order):
        return None
    return (
        "nothing can classify: no API key (OPENROUTER_API_KEY or LLM_ROUTER_API_KEY) and no "
        f"trained local model ({', '.join(order) or 'none'}) in {settings.model_dir.resolve()}; "
        "train one with 'llm-router train tfidf --data PATH', or set a key"
    )
