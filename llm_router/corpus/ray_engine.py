"""``--engine ray``: the corpus job of :mod:`llm_router.corpus.job` on Ray Data.

```
ray.data.read_text (jsonl, jsonl.gz: each line parsed as the local engine parses it)
 | read_csv (id, text and title read as strings) | read_parquet
  → map_batches(_Classify, concurrency=N)   each actor builds one Router: models load once
  → write_json(parts)                        → the driver appends the parts to OUTPUT
```
The driver decides what is written, exactly as the local engine does: ids already in OUTPUT
are skipped by the workers (nothing is sent for them), and the driver drops a repeated id
(``duplicate_id``) when it merges the parts into the single OUTPUT file.

Limits for the whole cluster: the LLM's requests per minute are handed out by one actor (a
:class:`~llm_router.llm.ratelimit.Schedule`), so ``--rpm`` holds for all workers together;
the request, token and USD budgets are split evenly between the N workers (each gets 1/N),
so their sum never goes over the total; with fewer requests allowed than workers, only as
many workers start as there are requests, so no worker gets a budget of nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from llm_router.errors import ConfigError
from llm_router.llm.ratelimit import RateLimiter, Schedule
from llm_router.records import DataError

logger = logging.getLogger(__name__)

_INSTALL = 'the Ray engine needs the [ray] extra: pip install -e ".[ray]"'


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(_INSTALL) from None
    return ray


class _ClusterSlots:
    """The slots of one :class:`~llm_router.llm.ratelimit.Schedule` kept in a Ray actor, on
    wall-clock time (``time.time``) so that every worker's machine reads them alike; a
    ``Retry-After`` seen by any worker slows them all."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def reserve(self) -> float:
        import ray

        return float(ray.get(self.actor.reserve.remote()))

    def slow_down(self, seconds: float) -> None:
        self.actor.slow_down.remote(seconds)


def _cluster_limiter(actor: Any) -> RateLimiter:
    return RateLimiter(slots=_ClusterSlots(actor), clock=time.time)


class _Classify:
    """A Ray Data callable class: one Router per actor, built once."""

    def __init__(
        self,
        settings: Any,
        kind: str,
        fields: dict[str, Any],
        done: set[str],
        limits: dict[str, Any],
        keeper: Any,
        concurrency: int,
    ) -> None:
        from llm_router.llm.budget import Budget
        from llm_router.router import Router

        self.kind = kind
        self.fields = fields
        self.done = done
        self.concurrency = concurrency
        limiter = _cluster_limiter(keeper) if keeper is not None else None
        self.router = Router.from_settings(settings, budget=Budget(**limits), limiter=limiter)
        self._lock = threading.Lock()

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from llm_router.corpus.sink import output_row
        from llm_router.errors import spent_by
        from llm_router.records import normalise_id, record_text
        from llm_router.schemas import Classification

        rows = batch.to_pylist()
        out: list[dict[str, Any]] = []
        if self.kind == "jsonl":
            rows = [_parsed(r["text"]) for r in rows if r["text"].strip()]
            out += [{"id": None, "_status": "bad_line"} for r in rows if r is None]
            rows = [r for r in rows if r is not None]
        todo: list[tuple[str, object]] = []
        id_field = self.fields["id_field"]
        for row in rows:
            item_id = normalise_id(row.get(id_field))
            if item_id is None:
                out.append({"id": None, "_status": "missing_id"})
            elif item_id in self.done:
                out.append({"id": item_id, "_status": "skipped"})
            else:
                todo.append(
                    (
                        item_id,
                        record_text(row, self.fields["text_field"], self.fields["title_field"]),
                    )
                )
        results = self.router.classify_batch([t for _, t in todo], concurrency=self.concurrency)
        for (item_id, _), result in zip(todo, results, strict=True):
            usage = result.usage if isinstance(result, Classification) else spent_by(result)
            requests = usage.requests if usage is not None else 0
            out.append({**output_row(item_id, result), "_status": "row", "_requests": requests})
        columns = _schema()
        return pa.Table.from_pylist([{**dict.fromkeys(columns.names), **r} for r in out], columns)


def _parsed(line: str) -> dict[str, Any] | None:
    """A JSON-lines row, or None for a line that is not a JSON object (counted, not fatal)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def _schema() -> Any:
    from llm_router.corpus.sink import arrow_schema

    return arrow_schema({"_status": "string", "_requests": "int64"})


def _dataset(ray: Any, path: Path, fields: dict[str, Any]) -> tuple[Any, str]:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        return ray.data.read_text(str(path)), "jsonl"
    if name.endswith(".csv"):
        import pyarrow as pa
        import pyarrow.csv as pacsv

        text_columns = [fields["id_field"], fields["text_field"]]
        if fields["title_field"]:
            text_columns.append(fields["title_field"])
        options = pacsv.ConvertOptions(column_types=dict.fromkeys(text_columns, pa.string()))
        return ray.data.read_csv(str(path), convert_options=options), "csv"
    return ray.data.read_parquet(str(path)), "parquet"


def classify_file_ray(
    input_path: Path,
    output_path: Path,
    *,
    settings: Any,
    text_field: str,
    title_field: str | None,
    id_field: str,
    concurrency: int,
    max_requests: int | None,
    max_cost_usd: float | None,
    max_tokens: int | None,
    address: str | None,
    workers: int | None,
    chunk_size: int,
) -> Any:
    """The corpus job on Ray Data; same OUTPUT, columns and summary as the local engine."""
    from llm_router.corpus.sink import Sink
    from llm_router.corpus.tally import Tally

    ray = _ray()
    started = time.perf_counter()
    from llm_router.corpus.rows import first_row

    first = first_row(input_path)  # one-line errors before Ray starts
    if first is not None and id_field not in first:
        raise DataError(f"{input_path}: no id field {id_field!r} in the input; pass --id-field")
    sink = Sink(output_path)
    final = sink.final_rows()
    done = set(final)
    # Workers may start in another directory: give them absolute paths.
    settings = settings.model_copy(
        update={
            "model_dir": settings.model_dir.resolve(),
            "cache_dir": settings.resolved_cache_dir().resolve(),
        }
    )
    if not ray.is_initialized():
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    # One CPU stays free for the read and write tasks: with every CPU held by a classifying
    # actor the pipeline could not read its next block.
    n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) - 1)
    fields = {"text_field": text_field, "title_field": title_field, "id_field": id_field}
    keeper = None
    if settings.api_key is not None:
        keeper = ray.remote(Schedule).remote(
            settings.rpm, max_pause_s=settings.retry_after_max_s, clock=time.time
        )
    if max_requests:  # fewer actors than requests: none gets a share of nothing
        n = min(n, max_requests)
    limits = {
        "max_requests": None if max_requests is None else max_requests // n,
        "max_tokens": None if max_tokens is None else max_tokens // n,
        "max_cost_usd": None if max_cost_usd is None else max_cost_usd / n,
    }
    dataset, kind = _dataset(ray, input_path, fields)
    classified = dataset.map_batches(
        _Classify,
        fn_constructor_kwargs={
            "settings": settings,
            "kind": kind,
            "fields": fields,
            "done": done,
            "limits": limits,
            "keeper": keeper,
            "concurrency": concurrency,
        },
        batch_size=chunk_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=n),
        num_cpus=1,
    )
    parts = Path(tempfile.mkdtemp(prefix=".ray-parts-", dir=output_path.parent or None))
    tally = Tally()
    tally.summary.engine = "ray"
    tally.summary.output = str(output_path)
    try:
        classified.write_json(str(parts))
        _merge(sorted(parts.glob("*.json*")), sink, tally, final)
    finally:
        sink.close()
        shutil.rmtree(parts, ignore_errors=True)
    tally.summary.wall_s = time.perf_counter() - started
    return tally.finish()


def _merge(parts: list[Path], sink: Any, tally: Any, final: dict[str, str | None]) -> None:
    """Append the workers' rows to OUTPUT, dropping ids written before (duplicates); a row
    skipped for a final error in OUTPUT counts as failed again."""
    from llm_router.corpus.sink import COLUMNS

    seen: set[str] = set()
    for part in parts:
        rows = []
        for line in part.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            status = row.pop("_status")
            tally.summary.read += 1
            if status in ("missing_id", "bad_line"):
                if status == "bad_line":
                    logger.warning("a line of the input is not a JSON object (bad_line)")
                tally.fail(status)
            elif row["id"] in seen:  # a repeated id: its first copy counts
                tally.fail("duplicate_id")
            elif status == "skipped":
                seen.add(row["id"])
                if final.get(row["id"]) is None:
                    tally.summary.skipped += 1
                else:
                    tally.fail(str(final[row["id"]]))
            else:
                seen.add(row["id"])
                requests = row.pop("_requests", 0) or 0
                kept = {c: row.get(c) for c in COLUMNS}
                rows.append(kept)
                tally.add_row(kept, requests)
        sink.write(rows)
