"""Reading rows of records from local files: ``.jsonl``, ``.jsonl.gz``, ``.csv``, ``.parquet``.

One reader for every consumer: the corpus job (:mod:`llm_router.corpus`) and the training
data loader (:mod:`fallback_models.data`), with the two rules they must agree on: what an id
is (:func:`normalise_id`) and what text a model sees (:func:`record_text`). Rows stream one
at a time (parquet by record batch), so a corpus larger than memory can be read.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, overload

from llm_router.errors import RouterError

SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet", ".csv")


class DataError(RouterError, ValueError):
    """The data source is missing, unreadable, unreachable or lacks required columns (a
    :class:`~llm_router.errors.RouterError`, as everything the package raises on purpose)."""


@overload
def read_records(path: Path) -> Iterator[dict[str, Any]]: ...


@overload
def read_records(path: Path, *, raw_lines: bool) -> Iterator[dict[str, Any] | tuple[int, str]]: ...


def read_records(path: Path, *, raw_lines: bool = False) -> Iterator[Any]:
    """Yield each row of ``path`` as a dict (with ``raw_lines``, a JSON-lines file yields
    each non-blank line unparsed with its line number, for :func:`parse_line`).

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
                for number, line in enumerate(handle, start=1):
                    if line.strip():
                        yield (number, line) if raw_lines else parse_line(path, line, number)
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


def join_title(title: object, abstract: str) -> str:
    """What the models see: ``title. abstract`` when there is a title, else the abstract."""
    if isinstance(title, str) and title.strip() and abstract.strip():
        return f"{title.strip()}. {abstract.strip()}"
    return abstract


def record_text(row: dict[str, Any], text_field: str, title_field: str | None) -> object:
    """The text of a row as the models see it (:func:`join_title`); the raw value (None, a
    number, ...) when the text is not a string, for the caller to reject."""
    text = row.get(text_field)
    if not isinstance(text, str):
        return text
    return join_title(row.get(title_field) if title_field else None, text)


def normalise_id(value: object) -> str | None:
    """An id as a string (integers as digits, strings untouched); None when null or empty."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    return text if text.strip() else None


class BadLine(DataError):
    """One line of a JSON-lines file is not a JSON object; ``number`` says which."""

    def __init__(self, path: Path, number: int, problem: str) -> None:
        super().__init__(f"{path} line {number}: {problem}")
        self.number = number


def parse_line(path: Path, line: str, number: int) -> dict[str, Any]:
    """Line ``number`` of a JSON-lines file, as a row.

    Raises:
        BadLine: the line is not valid JSON, or not an object.
    """
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadLine(path, number, f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(row, dict):
        raise BadLine(path, number, f"not a JSON object: {line.strip()[:40]!r}")
    return row


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
