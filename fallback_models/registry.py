"""The one list of local model kinds: tfidf, bert and their ensemble.

The router finds it through the ``llm_router.local_models`` entry point (``pyproject.toml``),
so ``llm_router`` never imports this package; the training command and the evaluation read
the same list here. A new kind is one :class:`Kind` added to :data:`KINDS`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fallback_models.artifacts import (
    MANIFEST,
    deployed_label_set,
    order_by_quality,
    quality,
    read_manifest,
    sha256_file,
)
from llm_router.classifier import Classifier
from llm_router.errors import ModelNotAvailable
from llm_router.labels import LabelSet
from llm_router.reasons import Reason
from llm_router.settings import Settings

if TYPE_CHECKING:
    from fallback_models.train import Dataset


@dataclass(frozen=True)
class LoadContext:
    """What a loader gets: its directory, the settings, and the chain's other kinds."""

    directory: Path
    settings: Settings
    sibling: Callable[[str], Classifier]


Loader = Callable[[LoadContext], Classifier]
# dataset, output directory, the training command's options → the saved model's manifest
Trainer = Callable[["Dataset", Path, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Kind:
    """A local model kind: its name, how it loads, and whether ``train`` builds it in
    ``<model_dir>/<name>/`` (a composed kind, such as the ensemble, is built from others)."""

    name: str
    load: Loader
    train: Trainer | None = None  # None: composed from other kinds, never trained itself

    @property
    def trained(self) -> bool:
        return self.train is not None


def _load_tfidf(context: LoadContext) -> Classifier:
    from fallback_models.tfidf import TfidfClassifier

    return TfidfClassifier.load(context.directory)


def _load_bert(context: LoadContext) -> Classifier:
    from fallback_models.bert import BertClassifier

    return BertClassifier.load(context.directory, device=context.settings.device)


def _load_ensemble(context: LoadContext) -> Classifier:
    """BERT and TF-IDF pooled with the weights and temperature fitted when BERT was trained
    beside this TF-IDF model, sharing the instances the chain already loaded."""
    from fallback_models.ensemble import EnsembleClassifier

    bert, tfidf = (context.sibling(name) for name in ENSEMBLE_MEMBERS)
    record = ensemble_record(context.settings.model_dir, getattr(bert, "ensemble", None))
    if record is None:
        raise ModelNotAvailable(
            "the ensemble's weights were fitted with another TF-IDF model (or none): retrain "
            "bert beside this one ('llm-router train bert --data PATH')",
            classifier="ensemble",
            reason="stale_artifacts",
        )
    weights = [float(record["weights"]["bert"]), float(record["weights"]["tfidf"])]
    try:
        return EnsembleClassifier(
            [bert, tfidf],  # type: ignore[list-item]
            weights,
            float(record["temperature"]),
        )
    except ValueError as exc:
        raise ModelNotAvailable(
            str(exc), classifier="ensemble", reason=Reason.LABEL_MISMATCH
        ) from exc


def ensemble_record(model_dir: Path, record: object) -> dict[str, Any] | None:
    """The BERT manifest's ensemble section when it was fitted with the TF-IDF model now in
    ``model_dir`` (the sha256 of its manifest matches), else None."""
    manifest = model_dir / "tfidf" / MANIFEST
    if not isinstance(record, dict) or not manifest.is_file():
        return None
    return record if record.get("tfidf_sha256") == sha256_file(manifest) else None


def _train_tfidf(dataset: Dataset, out: Path, options: dict[str, Any]) -> dict[str, Any]:
    from fallback_models.tfidf import TfidfConfig
    from fallback_models.train import train_tfidf

    config = TfidfConfig(seed=options["seed"])
    if options.get("calibration"):
        config = replace(config, calibration=options["calibration"])
    return train_tfidf(dataset, out, config)


def _train_bert(dataset: Dataset, out: Path, options: dict[str, Any]) -> dict[str, Any]:
    from fallback_models.bert import BertConfig, default_base_model
    from fallback_models.train import train_bert

    config = BertConfig(
        base_model=options.get("base") or default_base_model(),
        mode=options["mode"],
        max_length=options["max_length"],
        seed=options["seed"],
        max_train_rows=options.get("max_train_rows"),
        hidden=options["hidden"],
        head_epochs=options["head_epochs"],
        epochs=options["epochs"],
        batch_size=options["batch_size"],
        learning_rate=options["lr"],
    )
    return train_bert(
        dataset, out, config, device=options.get("device"), cache_dir=options["cache_dir"]
    )


ENSEMBLE_MEMBERS = ("bert", "tfidf")
# The order is the default chain's (before measured quality reorders it).
KINDS = (
    Kind("bert", _load_bert, _train_bert),
    Kind("tfidf", _load_tfidf, _train_tfidf),
    Kind("ensemble", _load_ensemble),  # bert and tfidf pooled
)


class FallbackModels:
    """:data:`KINDS` as the core's :class:`~llm_router.registry.LocalModels`."""

    def __init__(self, kinds: Sequence[Kind]) -> None:
        self.by_name = {kind.name: kind for kind in kinds}
        self.kinds = tuple(self.by_name)
        self.trained = tuple(kind.name for kind in kinds if kind.trained)

    def train(
        self, kind: str, dataset: Dataset, out: Path, options: dict[str, Any]
    ) -> dict[str, Any]:
        """Train ``kind`` on ``dataset`` into ``out``; returns the saved manifest."""
        trainer = self.by_name[kind].train
        if trainer is None:
            raise ValueError(f"{kind} is not trained on its own")
        return trainer(dataset, out, options)

    def load(
        self,
        kind: str,
        settings: Settings,
        labels: LabelSet,
        sibling: Callable[[str], Classifier],
    ) -> Classifier:
        """Load and verify one local model; it must answer in the deployed label set.

        Raises:
            ModelNotAvailable: artifacts missing or refused, a dependency missing, or a
                model trained on another label set.
        """
        if kind not in self.by_name:
            raise ModelNotAvailable(
                f"unknown local model {kind!r}", classifier=kind, reason="unknown"
            )
        directory = settings.model_dir / kind
        model = self.by_name[kind].load(LoadContext(directory, settings, sibling))
        own = getattr(model, "labels", None)
        # A chain built before any model was trained answers in the full taxonomy; the first
        # model to appear (a service started before its training job ended) is welcome.
        before_any = labels.labels == LabelSet.full_taxonomy().labels
        if isinstance(own, LabelSet) and own.labels != labels.labels and not before_any:
            raise ModelNotAvailable(
                f"{kind} model at {directory} was trained on a different label set; retrain it",
                classifier=kind,
                reason=Reason.LABEL_MISMATCH,
            )
        return model

    def available(self, model_dir: Path, kind: str) -> bool:
        members = ENSEMBLE_MEMBERS if kind == "ensemble" else (kind,)
        return all((model_dir / member / MANIFEST).is_file() for member in members)

    def version(self, model_dir: Path, kind: str) -> object:
        """The manifests' (size, mtime, inode): a save swaps in a new folder, so they change."""
        members = ENSEMBLE_MEMBERS if kind == "ensemble" else (kind,)
        identity: list[tuple[int, int, int] | None] = []
        for member in members:
            try:
                info = (model_dir / member / MANIFEST).stat()
            except OSError:
                identity.append(None)
                continue
            identity.append((info.st_size, info.st_mtime_ns, info.st_ino))
        return tuple(identity)

    def sha256(self, model_dir: Path, kind: str) -> str | None:
        """The sha256 of the manifest (the ensemble: of its members' manifests), which lists
        every file's sha256: the identity a calibration profile is fitted to."""
        members = ENSEMBLE_MEMBERS if kind == "ensemble" else (kind,)
        digests = []
        for member in members:
            manifest = model_dir / member / MANIFEST
            if not manifest.is_file():
                return None
            digests.append(sha256_file(manifest))
        if len(digests) == 1:
            return digests[0]
        return hashlib.sha256(f"{kind}:{','.join(digests)}".encode()).hexdigest()

    def label_set(self, model_dir: Path, order: Sequence[str]) -> LabelSet:
        return deployed_label_set(model_dir, (*order, *self.trained))

    def texts_per_second(self, model_dir: Path, kind: str) -> float | None:
        """How fast ``kind`` answered in batches when it was trained (the slower member's
        speed for the ensemble), from the manifests; None when unknown."""
        members = ENSEMBLE_MEMBERS if kind == "ensemble" else (kind,)
        speeds = []
        for member in members:
            try:
                ms = float(
                    read_manifest(model_dir / member, member)["metrics"]["inference_ms_per_text"]
                )
            except (ModelNotAvailable, KeyError, TypeError, ValueError):
                return None
            speeds.append(1000.0 / ms if ms > 0 else float("inf"))
        return min(speeds)

    def default_order(self, model_dir: Path) -> tuple[str, ...]:
        """Every trained kind, then the ensemble when its quality was measured against the
        installed models; a kind measured worse never goes before a better one."""
        measured: dict[str, tuple[float, tuple[str, str]]] = {}
        try:
            bert = read_manifest(model_dir / "bert", "bert")
            record = ensemble_record(model_dir, bert.get("ensemble"))
            if record is not None:
                measured["ensemble"] = quality({**bert, "metrics": record["metrics"]})
        except (ModelNotAvailable, KeyError, TypeError, ValueError):
            pass
        return order_by_quality(model_dir, (*self.trained, *measured), measured)


MODELS = FallbackModels(KINDS)
