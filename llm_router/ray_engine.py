"""``--engine ray``: the corpus job of :mod:`llm_router.corpus` on Ray Data.

```
ray.data.read_text (jsonl, jsonl.gz: each line parsed as the local engine parses it)
 | read_csv (id, text and title read as strings) | read_parquet
  → map_batches(_Classify, concurrency=N)   each actor builds one Router: models load once
  → write_json(parts)                        → the driver appends the parts to OUTPUT
```
The driver decides what is written, exactly as the local engine does: ids already in OUTPUT
are skipped by the workers (nothing is sent for them), and the driver drops a repeated id
(``duplicate_id``) when it merges the parts into the single OUTPUT file.

Limits for the whole cluster: the LLM's requests per minute are handed out by one actor
(:class:`SlotKeeper`), so ``--rpm`` holds for all workers together; the request, token and
USD budgets are split evenly between the N workers (each gets 1/N), so their sum never goes
over the total.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_router.errors import ConfigError
from llm_router.ratelimit import RateLimiter
from llm_router.records import DataError, read_records

logger = logging.getLogger(__name__)

_INSTALL = 'the Ray engine needs the [ray] extra: pip install -e ".[ray]"'


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(_INSTALL) from None
    return ray


class SlotKeeper:
    """Hands out request slots ``60 / rpm`` seconds apart, for every worker of a cluster
    (run as a Ray actor); ``slow_down`` is a ``Retry-After`` seen by any of them."""

    def __init__(self, rpm: float | None, max_pause_s: float) -> None:
        self.interval_s = 0.0 if rpm is None else 60.0 / rpm
        self.max_pause_s = max_pause_s
        self._next = 0.0

    def reserve(self) -> float:
        """The wall-clock time (``time.time()``) at which the caller may send."""
        now = time.time()
        slot = max(now, self._next)
        self._next = slot + self.interval_s
        return slot

    def slow_down(self, seconds: float) -> None:
        self._next = max(self._next, time.time() + min(seconds, self.max_pause_s))


class ClusterRateLimiter(RateLimiter):
    """A :class:`~llm_router.ratelimit.RateLimiter` whose slots come from a SlotKeeper actor."""

    def __init__(self, keeper: Any) -> None:
        super().__init__(None)
        self.keeper = keeper

    def acquire(self, abort: Callable[[], bool] | None = None) -> float:
        import ray

        slot = float(ray.get(self.keeper.reserve.remote()))
        wait = max(0.0, slot - time.time())
        while time.time() < slot:
            if abort is not None and abort():
                break
            time.sleep(min(0.05, max(0.0, slot - time.time())))
        return wait

    def slow_down(self, seconds: float) -> None:
        self.keeper.slow_down.remote(seconds)


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
        from llm_router.budget import Budget
        from llm_router.router import Router

        self.kind = kind
        self.fields = fields
        self.done = done
        self.concurrency = concurrency
        limiter = ClusterRateLimiter(keeper) if keeper is not None else None
        self.router = Router.from_settings(settings, budget=Budget(**limits), limiter=limiter)
        self._lock = threading.Lock()

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from llm_router.corpus import normalise_id, text_of, usage_of
        from llm_router.sink import output_row

        rows = batch.to_pylist()
        if self.kind == "jsonl":
            rows = [json.loads(r["text"]) for r in rows if r["text"].strip()]
        out: list[dict[str, Any]] = []
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
                    (item_id, text_of(row, self.fields["text_field"], self.fields["title_field"]))
                )
        results = self.router.classify_batch([t for _, t in todo], concurrency=self.concurrency)
        for (item_id, _), result in zip(todo, results, strict=True):
            usage = usage_of(result)
            requests = usage.requests if usage is not None else 0
            out.append({**output_row(item_id, result), "_status": "row", "_requests": requests})
        columns = _schema()
        return pa.Table.from_pylist([{**dict.fromkeys(columns.names), **r} for r in out], columns)


def _schema() -> Any:
    import pyarrow as pa

    from llm_router.sink import COLUMNS

    numeric = {"score": pa.float64(), "cost_usd": pa.float64()}
    numeric.update({"prompt_tokens": pa.int64(), "completion_tokens": pa.int64()})
    numeric["_requests"] = pa.int64()
    names = (*COLUMNS, "_status", "_requests")
    return pa.schema([(c, numeric.get(c, pa.string())) for c in names])


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
    from llm_router.corpus import Tally
    from llm_router.sink import Sink

    ray = _ray()
    started = time.perf_counter()
    first = next(iter(read_records(input_path)), None)  # one-line errors before Ray starts
    if first is not None and id_field not in first:
        raise DataError(f"{input_path}: no id field {id_field!r} in the input; pass --id-field")
    sink = Sink(output_path)
    done = sink.done_ids()
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
        keeper = ray.remote(SlotKeeper).remote(settings.rpm, settings.retry_after_max_s)
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
        _merge(sorted(parts.glob("*.json*")), sink, tally)
    finally:
        sink.close()
        shutil.rmtree(parts, ignore_errors=True)
    tally.summary.wall_s = time.perf_counter() - started
    return tally.finish()


def _merge(parts: list[Path], sink: Any, tally: Any) -> None:
    """Append the workers' rows to OUTPUT, dropping ids written before (duplicates)."""
    from llm_router.sink import COLUMNS

    seen: set[str] = set()
    for part in parts:
        rows = []
        for line in part.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            status = row.pop("_status")
            tally.summary.read += 1
            if status == "missing_id":
                tally.fail("missing_id")
            elif row["id"] in seen:  # a repeated id: its first copy counts
                tally.fail("duplicate_id")
            elif status == "skipped":
                seen.add(row["id"])
                tally.summary.skipped += 1
            else:
                seen.add(row["id"])
                requests = row.pop("_requests", 0) or 0
                kept = {c: row.get(c) for c in COLUMNS}
                rows.append(kept)
                tally.add_row(kept, requests)
        sink.write(rows)
