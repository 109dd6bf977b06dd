"""Reading rows of records from local files: ``.jsonl``, ``.jsonl.gz``, ``.csv``, ``.parquet``.

One reader for every consumer: the corpus job (:mod:`llm_router.corpus`) and the training
data loader (:mod:`fallback_models.data`). Rows stream one at a time (parquet by record
batch), so a corpus larger than memory can be read.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet", ".csv")


class DataError(ValueError):
    """The data source is missing, unreadable, unreachable or lacks required columns."""


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Yield each row of ``path`` as a dict.

    Raises:
        DataError: the file is missing, of an unknown format, or unreadable (corrupt gzip
            or parquet, invalid JSON, bad encoding), with one line saying so.
    """
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            yield from _read_parquet(path)
        elif name.endswith(".csv"):
            with path.open(newline="", encoding="utf-8") as handle:
                yield from csv.DictReader(handle)
        elif name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".json")):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as handle:
                for n, line in enumerate(handle, start=1):
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row, dict):
                            raise DataError(f"{path}: line {n} is not a JSON object")
                        yield row
        else:
            raise DataError(f"{path}: unsupported format (use {', '.join(SUFFIXES)})")
    except (
        OSError,
        UnicodeDecodeError,
        json.JSONDecodeError,
        csv.Error,
        EOFError,
        zlib.error,
    ) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def _read_parquet(path: Path) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError("reading .parquet needs pyarrow: pip install pyarrow") from exc
    try:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=4096):
            yield from batch.to_pylist()
    except pa.ArrowException as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
