"""The corpus job's input: which rows are still to classify, read once, line by line.

A bad line of a JSON-lines input is counted (with its line number in the log) and the job
goes on; only an input that cannot be read at all stops it (:class:`~llm_router.records.
DataError`, exit code 2).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Container, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from llm_router.corpus.sink import OUTPUT_SUFFIXES
from llm_router.corpus.tally import Tally
from llm_router.records import (
    BadLine,
    DataError,
    normalise_id,
    parse_line,
    read_records,
    record_text,
)

logger = logging.getLogger(__name__)

INPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".csv", ".parquet")


class Item(NamedTuple):
    """One input row to classify: its id and its text (or what was wrong with it)."""

    id: str
    text: object


def check_paths(input_path: Path, output_path: Path) -> None:
    """One-line errors for an unusable INPUT or OUTPUT, before any work starts."""
    if not input_path.name.lower().endswith(INPUT_SUFFIXES):
        raise DataError(f"{input_path}: unsupported input format (use {', '.join(INPUT_SUFFIXES)})")
    if not input_path.is_file():
        raise DataError(f"input not found: {input_path}")
    if output_path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(
            f"{output_path}: unsupported output format (use {', '.join(OUTPUT_SUFFIXES)})"
        )
    if output_path.resolve() == input_path.resolve():
        raise DataError("OUTPUT must not be the INPUT file")
    parquet = [p for p in (input_path, output_path) if p.suffix.lower() == ".parquet"]
    if parquet:  # before the first row, not after the whole corpus
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise DataError(f"{parquet[0]}: .parquet needs pyarrow: pip install pyarrow") from None


class Written(NamedTuple):
    """An input row whose id is already in OUTPUT, recognised without parsing the row."""

    id: str


def fast_records(
    path: Path, id_field: str, done: Container[str]
) -> Iterator[dict[str, Any] | Written | BadLine]:
    """The input's rows. A ``.jsonl``/``.jsonl.gz`` is parsed line by line: a line that is
    not a JSON object comes as its :class:`BadLine` (the job counts it and goes on), and a
    line that starts with a plain string id already written is recognised by that id alone
    (a resume reads, but does not parse, the rows it skips). Other formats go through
    :func:`read_records`, which stops only when the file cannot be read at all."""
    name = path.name.lower()
    if not name.endswith((".jsonl", ".jsonl.gz")):
        yield from read_records(path)
        return
    leading = re.compile(r'^\{"' + re.escape(id_field) + r'": "([^"\\]*)"')
    for item in read_records(path, raw_lines=True):
        if not isinstance(item, tuple):
            yield item
            continue
        number, line = item
        fast = leading.match(line) if done else None
        if fast is not None and fast.group(1) in done:
            yield Written(fast.group(1))
            continue
        try:
            yield parse_line(path, line, number)
        except BadLine as bad:
            yield bad


def first_row(path: Path) -> dict[str, Any] | None:
    """The input's first readable row (bad lines skipped), to check its fields up front."""
    for row in fast_records(path, "", set()):
        if isinstance(row, dict):
            return row
    return None


def iter_items(
    rows: Iterable[dict[str, Any] | Written | BadLine],
    *,
    text_field: str,
    title_field: str | None,
    id_field: str,
    done: dict[str, str | None],
    tally: Tally,
) -> Iterator[Item]:
    """The rows still to classify. ``done`` holds the final rows of OUTPUT (id → the kind of
    its error, None when answered): an answered one is skipped, one with a final error is
    counted as failed again (it is still unanswered); a repeated id or a missing one is
    counted as failed."""
    seen: set[str] = set()
    for row in rows:
        tally.summary.read += 1
        if isinstance(row, BadLine):
            logger.warning("%s (counted as failed: bad_line)", row)
            tally.fail("bad_line")
            continue
        item_id = row.id if isinstance(row, Written) else normalise_id(row.get(id_field))
        if item_id is None:
            tally.fail("missing_id")
            continue
        if item_id in seen:
            tally.fail("duplicate_id")
            continue
        seen.add(item_id)
        if item_id in done:
            kind = done[item_id]
            if kind is None:
                tally.summary.skipped += 1
            else:
                tally.fail(kind)
            continue
        assert not isinstance(row, Written)  # only final ids are recognised unparsed
        yield Item(id=item_id, text=record_text(row, text_field, title_field))
