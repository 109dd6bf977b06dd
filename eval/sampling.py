"""Seeded, stratified sampling of held-out rows."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fallback_models.data import Paper
from llm_router.labels import LabelSet


@dataclass(frozen=True)
class Row:
    """One evaluation row: the paper and its label in the deployed space."""

    paper: Paper
    truth: str
    # Every category the paper lists, in the deployed space (the truth included).
    listed: frozenset[str] = frozenset()


def stratified_sample(
    papers: Sequence[Paper], allowed_ids: set[str], labels: LabelSet, n: int, seed: int
) -> list[Row]:
    """``n`` rows drawn only from ``allowed_ids``, allocated to labels in proportion to their
    share of that pool (largest remainder, ties broken by ``seed``), shuffled with ``seed``."""
    pool: dict[str, list[Paper]] = defaultdict(list)
    for paper in papers:
        if paper.id in allowed_ids:
            truth = labels.to_deployed(paper.primary_category)
            if truth is not None:
                pool[truth].append(paper)
    total = sum(len(v) for v in pool.values())
    if total == 0:
        return []
    n = min(n, total)
    rng = np.random.default_rng(seed)
    names = sorted(pool)
    exact = np.array([len(pool[k]) * n / total for k in names])
    counts = np.floor(exact).astype(int)
    remainder = exact - counts
    jitter = rng.random(len(names)) * 1e-9  # seeded tie-break between equal remainders
    for i in np.argsort(-(remainder + jitter))[: n - counts.sum()]:
        counts[i] += 1
    rows: list[Row] = []
    for name, k in zip(names, counts, strict=True):
        members = sorted(pool[name], key=lambda p: p.id)
        for i in rng.permutation(len(members))[:k]:
            paper = members[i]
            listed = {labels.to_deployed(c) or "other" for c in paper.categories} | {name}
            rows.append(Row(paper, name, frozenset(listed)))
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]
