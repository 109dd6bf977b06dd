"""Training: load data, balance labels, split deterministically, fit, evaluate, save."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from fallback_models.artifacts import library_versions
from fallback_models.data import DataError, Paper, data_fingerprint, load_papers, split_ids
from fallback_models.scoring import (
    score,
)
from llm_router.labels import MIN_ROWS, LabelSet

logger = logging.getLogger(__name__)


@dataclass
class Dataset:
    """Papers with deployed labels and the deterministic split, ready for training."""

    source: str
    fingerprint: str
    papers: list[Paper]
    labels: LabelSet
    targets: list[str]
    train_idx: list[int]
    test_idx: list[int]
    seed: int
    test_fraction: float
    split: str = "random"
    cutoff: str | None = None

    def texts(self, idx: Sequence[int]) -> list[str]:
        return [self.papers[i].text for i in idx]

    def published(self, idx: Sequence[int]) -> list[str | None]:
        return [self.papers[i].published for i in idx]

    def listed(self, idx: Sequence[int]) -> list[set[str]]:
        """Each row's listed categories in the deployed label space (the target included)."""
        to_deployed = self.labels.to_deployed
        return [
            {to_deployed(c) or "other" for c in self.papers[i].categories} | {self.targets[i]}
            for i in idx
        ]

    def y(self, idx: Sequence[int]) -> list[str]:
        return [self.targets[i] for i in idx]

    def manifest_fields(self) -> dict[str, Any]:
        return {
            "data": {"source": self.source, "sha256": self.fingerprint, "rows": len(self.papers)},
            "split": {
                "kind": self.split,
                **({"cutoff": self.cutoff} if self.cutoff else {}),
                "seed": self.seed,
                "test_fraction": self.test_fraction,
                "train_rows": len(self.train_idx),
                "test_ids": sorted(self.papers[i].id for i in self.test_idx),
            },
        }


SPLITS = ("random", "temporal")
TEMPORAL_CUTOFF = "2026-03-01"


def prepare_dataset(
    source: str,
    *,
    seed: int = 42,
    test_fraction: float = 0.1,
    min_rows: int = MIN_ROWS,
    split: str = "random",
    cutoff: str = TEMPORAL_CUTOFF,
) -> Dataset:
    """Load ``source`` and balance labels over all rows, then split.

    ``random``: 90/10 by label, seeded. ``temporal``: train on papers published before
    ``cutoff`` (``YYYY-MM-DD``), test on those published on or after it; rows without a
    date are in neither.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    papers = load_papers(source)
    labels = LabelSet.from_raw_labels((p.primary_category for p in papers), min_rows)
    targets = [labels.to_deployed(p.primary_category) or "other" for p in papers]
    duplicates = len(papers) - len({p.id for p in papers})
    if duplicates:
        logger.warning(
            "%d duplicate ids in %s; the split treats them as one paper", duplicates, source
        )
    if split == "temporal":
        train_idx = [i for i, p in enumerate(papers) if p.published and p.published < cutoff]
        test_idx = [i for i, p in enumerate(papers) if p.published and p.published >= cutoff]
        if not train_idx or not test_idx:
            raise DataError(
                f"{source}: a temporal split at {cutoff} needs dated rows on both sides "
                f"({len(train_idx)} before, {len(test_idx)} on or after)"
            )
    else:
        train_ids, test_ids = split_ids(
            [p.id for p in papers], targets, test_fraction=test_fraction, seed=seed
        )
        test_set = set(test_ids)
        test_idx = [i for i, p in enumerate(papers) if p.id in test_set]
        train_idx = [i for i, p in enumerate(papers) if p.id not in test_set]
    return Dataset(
        source,
        data_fingerprint(source),
        papers,
        labels,
        targets,
        train_idx,
        test_idx,
        seed,
        test_fraction,
        split,
        cutoff if split == "temporal" else None,
    )


class ProbabilisticModel(Protocol):
    labels: LabelSet

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray: ...


def evaluate(
    model: ProbabilisticModel,
    texts: Sequence[str],
    truth: Sequence[str],
    batch: int = 512,
    listed: Sequence[set[str]] | None = None,
) -> dict[str, Any]:
    """:func:`score` of the model's probabilities on ``texts``, with the time per text."""
    started = time.perf_counter()
    proba = np.vstack(
        [model.predict_proba(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    )
    seconds = time.perf_counter() - started
    metrics = score(proba, model.labels, truth, listed)
    metrics["inference_ms_per_text"] = seconds * 1000 / max(1, len(texts))
    return metrics


def train_tfidf(dataset: Dataset, out: Path, config: Any = None) -> dict[str, Any]:
    """Train, evaluate and save the TF-IDF model; returns its manifest."""
    from fallback_models.tfidf import TfidfClassifier, TfidfConfig

    config = config or TfidfConfig()
    stages = tqdm(desc="tfidf", unit="stage", bar_format="{desc}: {elapsed} {postfix}")

    def progress(message: str) -> None:
        stages.set_postfix_str(message)
        stages.update(1)

    started = time.perf_counter()
    model = TfidfClassifier.train(
        dataset.texts(dataset.train_idx),
        dataset.y(dataset.train_idx),
        dataset.labels,
        config,
        progress,
        published=dataset.published(dataset.train_idx),
    )
    train_s = time.perf_counter() - started
    progress("evaluating on the test split")
    test = dataset.test_idx
    metrics = evaluate(model, dataset.texts(test), dataset.y(test), listed=dataset.listed(test))
    stages.close()
    metrics["train_seconds"] = round(train_s, 1)
    return model.save(
        out,
        **dataset.manifest_fields(),
        config=asdict(config),
        metrics=metrics,
        library_versions=library_versions("numpy", "scipy", "torch"),
    )


def train_bert(
    dataset: Dataset,
    out: Path,
    config: Any,
    *,
    device: str | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Train, evaluate and save the BERT model; returns its manifest.

    The held-out rows that calibrate it are the TF-IDF model's (the same seeded slice of the
    training rows): neither model trained on them, so with a TF-IDF model beside ``out`` on
    the same split they also fit the ensemble's weight and temperature
    (:mod:`fallback_models.ensemble_fit`). The test metrics are on the full test split.
    """
    from fallback_models.bert import BertClassifier
    from fallback_models.encoder import pick_device
    from fallback_models.ensemble_fit import fit_with_tfidf, held_out_rows, sibling_tfidf, speed

    device = pick_device(device)
    mode = config.resolved_mode(device)
    tfidf = sibling_tfidf(dataset, out.parent / "tfidf")
    fit_idx, cal_idx = held_out_rows(dataset, tfidf)
    if mode == "frozen" and config.max_train_rows and config.max_train_rows < len(fit_idx):
        rng = np.random.default_rng(dataset.seed)
        fit_idx = sorted(rng.choice(fit_idx, size=config.max_train_rows, replace=False).tolist())
    stages = tqdm(
        desc=f"bert ({mode}, {device})", unit="stage", bar_format="{desc}: {elapsed} {postfix}"
    )

    def progress(message: str) -> None:
        stages.set_postfix_str(message)
        stages.update(1)

    started = time.perf_counter()
    model = BertClassifier.train(
        dataset.texts(fit_idx),
        dataset.y(fit_idx),
        dataset.labels,
        config,
        device,
        progress,
        calibration=(dataset.texts(cal_idx), dataset.y(cal_idx)),
        cache_dir=cache_dir,
    )
    train_s = time.perf_counter() - started
    progress("evaluating on the test split")
    test = dataset.test_idx
    texts, truth, listed = dataset.texts(test), dataset.y(test), dataset.listed(test)
    log_proba = model.log_proba_cached(texts, cache_dir)
    metrics = score(np.exp(log_proba), dataset.labels, truth, listed)
    metrics.update(speed(model, texts))
    metrics.update(
        train_seconds=round(train_s, 1),
        train_rows=len(fit_idx),
        calibration_rows=len(cal_idx),
        device=device,
        mode=mode,
        runtime=model.encoder.runtime if model.encoder is not None else "torch",
    )
    extra: dict[str, Any] = {}
    if tfidf is not None:
        progress("fitting the ensemble with tfidf")
        extra["ensemble"] = fit_with_tfidf(model, tfidf, dataset, cal_idx, log_proba, cache_dir)
    stages.close()
    return model.save(
        out,
        **dataset.manifest_fields(),
        config=asdict(config),
        metrics=metrics,
        **extra,
        library_versions=library_versions("torch", "transformers", "tokenizers", "safetensors"),
    )
