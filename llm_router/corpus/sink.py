"""The corpus job's OUTPUT file: its columns, whole-row appends, and what is already in it.

``.jsonl`` and ``.csv`` outputs are appended to in whole rows (one write per batch of rows);
a row torn by a crash mid-write is cut off before the next run reads the ids. ``.parquet``
cannot be appended to: rows go to a journal beside it (``OUTPUT.parts/*.jsonl``), merged into a
new OUTPUT (written aside, then renamed) when the job ends.

A row is final when it holds an answer, or an error that no later run could change (an
invalid input). Any other error row (no classifier could answer, the LLM failed or the budget
ran out with nothing to fall back on) is asked again by the next run, which appends the new
row; when that run ends, OUTPUT is rewritten (aside, then renamed) with one row per id, the
latest.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from llm_router.errors import reason_of
from llm_router.records import DataError
from llm_router.schemas import Classification

logger = logging.getLogger(__name__)

COLUMNS = (
    "id",
    "label",
    "name",
    "group",
    "source",
    "confidence",
    "fallback_reason",
    "model",
    "prompt_version",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "error",
)
OUTPUT_SUFFIXES = (".jsonl", ".csv", ".parquet")
_ARROW_TYPES = {
    "confidence": "float64",
    "cost_usd": "float64",
    "prompt_tokens": "int64",
    "completion_tokens": "int64",
}


def arrow_schema(extra: dict[str, str] | None = None) -> Any:
    """The pyarrow schema of OUTPUT's columns (strings but for the numbers), then ``extra``
    columns (name → pyarrow type name) in order."""
    import pyarrow as pa

    extra = extra or {}
    types = {**_ARROW_TYPES, **extra}
    return pa.schema([(c, getattr(pa, types.get(c, "string"))()) for c in (*COLUMNS, *extra)])


FINAL_ERRORS = frozenset({"invalid_input"})  # a later run would fail the same way


def is_final(error_kind: str | None) -> bool:
    """An answered row (no error), or one whose error cannot change on a later run."""
    return error_kind is None or error_kind in FINAL_ERRORS


def error_kind(error: object) -> str | None:
    """The reason at the head of an ``error`` cell (``no_api_key: ...``), None when empty."""
    if not isinstance(error, str) or not error:
        return None
    return error.split(":", 1)[0]


def output_row(item_id: str, result: Classification | Exception) -> dict[str, Any]:
    """One output row: the answer's columns, or the error that kept it from one."""
    if isinstance(result, Exception):
        return {**dict.fromkeys(COLUMNS), "id": item_id, "error": error_text(result)}
    usage = result.usage
    return {
        "id": item_id,
        "label": result.label,
        "name": result.name,
        "group": result.group,
        "source": result.source,
        "confidence": result.confidence,
        "fallback_reason": result.fallback_reason,
        "model": result.model,
        "prompt_version": result.prompt_version,
        "prompt_tokens": usage.prompt_tokens if usage else 0,
        "completion_tokens": usage.completion_tokens if usage else 0,
        "cost_usd": usage.cost_usd if usage and usage.cost_usd is not None else 0.0,
        "error": None,
    }


def error_text(exc: Exception) -> str:
    """``<reason>: <message>`` on one line (``invalid_input: ...``, ``no_api_key: ...``)."""
    return f"{reason_of(exc)}: {' '.join(str(exc).split())}"[:500]


class Sink:
    """The output file: ids already in it, and whole-row appends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.kind = path.suffix.lower()
        self.journal_dir = path.with_name(path.name + ".parts")
        self._lock = threading.Lock()
        self._handle: io.BufferedWriter | None = None
        self._earlier: set[str] = set()  # ids OUTPUT held before this run
        self._repeated = False  # this run wrote an id OUTPUT already held

    # The file rows are appended to: OUTPUT itself, or (parquet) this run's journal.
    def _append_target(self) -> Path:
        if self.kind == ".parquet":
            self.journal_dir.mkdir(parents=True, exist_ok=True)
            return self.journal_dir / f"part-{time.time_ns()}.jsonl"
        return self.path

    def written(self) -> dict[str, str | None]:
        """Every id already written → the kind of its error (None when answered); a torn
        last line is cut off first. For an id written twice, the later row counts."""
        found: dict[str, str | None] = {}
        if self.kind == ".parquet":
            if self.path.is_file():
                found.update(_parquet_rows(self.path))
            for part in sorted(self.journal_dir.glob("part-*.jsonl")):
                _cut_torn_tail(part)
                found.update(_jsonl_rows(part))
        elif self.path.is_file():
            _cut_torn_tail(self.path)
            found.update(_jsonl_rows(self.path) if self.kind == ".jsonl" else _csv_rows(self.path))
        self._earlier = set(found)
        return found

    def final_rows(self) -> dict[str, str | None]:
        """The rows no later run would change (:func:`is_final`): id → the kind of its
        error, None when answered. Other ids are asked again."""
        return {i: kind for i, kind in self.written().items() if is_final(kind)}

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append ``rows`` in one write: a crash leaves whole rows, or a torn last one that
        the next run cuts off."""
        if not rows:
            return
        with self._lock:
            if self._handle is None:
                target = self._append_target()
                fresh = not target.is_file() or target.stat().st_size == 0
                self._handle = open(target, "ab")  # noqa: SIM115 - kept open for the run
                if fresh and self.kind == ".csv":
                    self._handle.write(_csv_lines([dict(zip(COLUMNS, COLUMNS, strict=True))]))
            data = _csv_lines(rows) if self.kind == ".csv" else _jsonl_lines(rows)
            self._handle.write(data)
            self._handle.flush()
            if not self._repeated and any(r["id"] in self._earlier for r in rows):
                self._repeated = True

    def close(self) -> None:
        """Close the file; for parquet, merge OUTPUT and the journal into a new OUTPUT; when
        this run asked ids again, leave one row per id (the latest)."""
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
        if self._repeated and self.kind != ".parquet":
            _keep_latest(self.path, self.kind)
            self._repeated = False
        if self.kind == ".parquet":
            merge_parquet(self.path, sorted(self.journal_dir.glob("part-*.jsonl")))
            if self.journal_dir.is_dir():
                for part in self.journal_dir.glob("part-*.jsonl"):
                    part.unlink()
                self.journal_dir.rmdir()


def _jsonl_lines(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _csv_lines(rows: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return buffer.getvalue().encode("utf-8")


def _cut_torn_tail(path: Path) -> None:
    """Drop a last line without its newline: a row torn by a crash mid-write."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        step = min(size, 1 << 16)
        position = size
        while position > 0:
            start = max(0, position - step)
            handle.seek(start)
            chunk = handle.read(position - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                handle.truncate(start + cut + 1)
                break
            position = start
        else:
            handle.truncate(0)
    logger.warning("%s ended in a torn row (an interrupted write): it was dropped", path)


_ANSWERED = re.compile(r'^\{"id": "([^"\\]*)".*"error": null\}$')  # this job's answered rows


def _jsonl_rows(path: Path) -> Iterator[tuple[str, str | None]]:
    with open(path, encoding="utf-8") as handle:
        for n, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fast = _ANSWERED.match(line.rstrip("\n"))
            if fast is not None:  # an answered row written by this command: no parse
                yield fast.group(1), None
                continue
            try:
                row = json.loads(line)
                yield str(row["id"]), error_kind(row.get("error"))
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{path}: line {n} is not an output row ({exc})") from None


def _csv_rows(path: Path) -> Iterator[tuple[str, str | None]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is not None:
            _check_columns(path, reader.fieldnames)
        for row in reader:
            yield row["id"], error_kind(row["error"])


def _check_columns(path: Path, names: Sequence[str]) -> None:
    """An OUTPUT to resume has this version's columns (a CSV or parquet file is rewritten
    whole, so one with other columns cannot take new rows)."""
    if tuple(names) != COLUMNS:
        differ = sorted(set(names) ^ set(COLUMNS))[:4]
        raise DataError(
            f"{path} exists with other columns ({', '.join(differ) or 'another order'} differ): "
            "written by an earlier version or another program; choose another OUTPUT"
        )


def _parquet_rows(path: Path) -> list[tuple[str, str | None]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        _check_columns(path, pq.read_schema(path).names)
        table = pq.read_table(path, columns=["id", "error"])
    except (pa.ArrowException, KeyError, OSError) as exc:
        raise DataError(f"cannot read the existing output {path}: {exc}") from None
    ids, errors = table.column("id").to_pylist(), table.column("error").to_pylist()
    return [(str(i), error_kind(e)) for i, e in zip(ids, errors, strict=True)]


def _latest_per_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per id, the last one written, in the order of those last rows."""
    last = {str(row["id"]): n for n, row in enumerate(rows)}
    return [row for n, row in enumerate(rows) if last[str(row["id"])] == n]


def _keep_latest(path: Path, kind: str) -> None:
    """Rewrite a ``.jsonl``/``.csv`` OUTPUT with one row per id (aside, then renamed)."""
    temporary = path.with_name(path.name + ".tmp")
    if kind == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        temporary.write_bytes(_jsonl_lines(_latest_per_id(rows)))
    else:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        header = _csv_lines([dict(zip(COLUMNS, COLUMNS, strict=True))])
        temporary.write_bytes(header + _csv_lines(_latest_per_id(rows)))
    os.replace(temporary, path)


def merge_parquet(path: Path, parts: list[Path]) -> None:
    """Write OUTPUT anew from its current rows and the journal parts (atomic rename)."""
    if not parts:
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema()
    rows = pq.read_table(path).cast(schema).to_pylist() if path.is_file() else []
    for part in parts:
        rows += [json.loads(line) for line in part.read_text(encoding="utf-8").splitlines() if line]
    temporary = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(_latest_per_id(rows), schema=schema), temporary)
    os.replace(temporary, path)
