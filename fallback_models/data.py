"""Data loading and the deterministic train/test split the fallback models are trained on."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from llm_router.records import SUFFIXES, DataError, join_title, normalise_id, read_records

__all__ = ["HF_DATASET", "DataError", "Paper", "is_local", "load_papers", "split_ids"]

logger = logging.getLogger(__name__)

HF_DATASET = "real-jiakai/arxiver-with-category"
_LOCAL_SUFFIXES = SUFFIXES


@dataclass(frozen=True)
class Paper:
    """One labelled abstract. ``primary_category`` is the raw arXiv code."""

    id: str
    abstract: str
    primary_category: str
    title: str = ""
    published: str | None = None  # YYYY-MM-DD, when the data has it
    categories: tuple[str, ...] = ()  # every listed arXiv category, primary first

    @property
    def text(self) -> str:
        """What the models see: title and abstract."""
        return join_title(self.title, self.abstract)


def is_local(source: str) -> bool:
    """A path to a local file, as opposed to a hub id (``owner/name``).

    Local: a known suffix, an existing path, or anything shaped like a path rather than an
    id (absolute, ``./``, ``../``, ``~``, a backslash, or more than one ``/``).
    """
    if source.endswith(_LOCAL_SUFFIXES) or Path(source).exists():
        return True
    if source.startswith(("/", ".", "~")) or "\\" in source:
        return True
    return source.count("/") != 1


def load_papers(source: str) -> list[Paper]:
    """Read papers from a local ``.jsonl``/``.jsonl.gz``/``.parquet``/``.csv`` or a hub id.

    Rows need ``abstract`` and ``primary_category``; ``id``, ``title``, ``published`` and
    ``categories`` are optional (a missing id is derived from the abstract's hash, so splits
    stay stable).

    Raises:
        DataError: the file is missing or unreadable, a column is missing, or the hub is
            unreachable.
    """
    local = is_local(source)
    records = _read_local(Path(source).expanduser()) if local else _read_hub(source)
    papers: list[Paper] = []
    for n, row in enumerate(records, start=1):
        abstract = row.get("abstract")
        label = row.get("primary_category")
        if not isinstance(abstract, str) or not isinstance(label, str):
            missing = [
                k for k in ("abstract", "primary_category") if not isinstance(row.get(k), str)
            ]
            raise DataError(f"{source}: row {n} lacks text column(s) {', '.join(missing)}")
        if not abstract.strip() or not label.strip():
            continue
        paper_id = normalise_id(row.get("id")) or _derived_id(abstract)
        title = row.get("title")
        published = row.get("published")
        papers.append(
            Paper(
                paper_id,
                abstract.strip(),
                label.strip(),
                title.strip() if isinstance(title, str) else "",
                published if isinstance(published, str) and published else None,
                _categories(row.get("categories")),
            )
        )
    if not papers:
        raise DataError(f"{source}: no rows with an abstract and a primary_category")
    return papers


def _categories(value: Any) -> tuple[str, ...]:
    """A paper's listed categories: a list, or the list's text as CSV files store it."""
    if isinstance(value, str):
        value = value.strip("[]").replace("'", " ").replace('"', " ").replace(",", " ").split()
    if not isinstance(value, list | tuple):
        return ()
    return tuple(c.strip() for c in value if isinstance(c, str) and c.strip())


def _derived_id(abstract: str) -> str:
    return "sha1:" + hashlib.sha1(abstract.encode("utf-8", "replace")).hexdigest()[:16]


def _read_local(path: Path) -> Iterator[dict[str, Any]]:
    return read_records(path)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub (``HF_ENDPOINT``, the variable huggingface_hub itself reads, else
    huggingface.co) accepts a connection."""
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _read_hub(dataset_id: str) -> Iterator[dict[str, Any]]:
    if not _hub_reachable():
        raise DataError(
            f"cannot reach the Hugging Face hub to download {dataset_id!r}; pass a local "
            "file instead, e.g. --data ../shared/data/arxiv/arxiv_abstracts.jsonl.gz"
        )
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"loading {dataset_id!r} needs 'datasets': pip install datasets") from exc
    try:
        table = datasets.load_dataset(dataset_id, split="train")
    except (OSError, ValueError, ConnectionError) as exc:
        raise DataError(f"cannot load {dataset_id!r} from the hub: {exc}") from exc
    yield from table


def data_fingerprint(source: str) -> str:
    """sha256 of a local file's bytes, or ``hf:<id>`` for a hub data set."""
    if not is_local(source):
        return f"hf:{source}"
    digest = hashlib.sha256()
    with Path(source).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_ids(
    ids: Sequence[str], labels: Sequence[str], *, test_fraction: float = 0.1, seed: int = 42
) -> tuple[list[str], list[str]]:
    """Deterministic stratified split: (train ids, test ids), the same for the same input.

    Within each label, ids are sorted, shuffled with ``seed`` and the first
    ``round(test_fraction * n)`` go to test (at least one when a label has two or more rows).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    by_label: dict[str, list[str]] = defaultdict(list)
    for paper_id, label in zip(ids, labels, strict=True):
        by_label[label].append(paper_id)
    rng = np.random.default_rng(seed)
    train: list[str] = []
    test: list[str] = []
    for label in sorted(by_label):
        members = sorted(by_label[label])
        order = rng.permutation(len(members))
        n_test = round(test_fraction * len(members))
        if n_test == 0 and len(members) >= 2:
            n_test = 1
        picked = [members[i] for i in order]
        test.extend(picked[:n_test])
        train.extend(picked[n_test:])
    return sorted(train), sorted(test)
