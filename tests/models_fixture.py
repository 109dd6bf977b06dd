"""A real TF-IDF model trained once per test session on a few thousand shared rows."""

from __future__ import annotations

from pathlib import Path

from fallback_models.tfidf import TfidfConfig
from fallback_models.train import prepare_dataset, train_tfidf

SMALL = TfidfConfig(max_features=30_000, min_df=2)


def train_small_tfidf(data: Path, model_root: Path) -> Path:
    dataset = prepare_dataset(str(data), min_rows=30)
    train_tfidf(dataset, model_root / "tfidf", SMALL)
    return model_root
