"""Classify a whole corpus file: resumable, never paying twice, one output file.

``classify_file(input, output)`` reads ``.jsonl``/``.jsonl.gz``/``.csv``/``.parquet`` rows,
skips every id already in ``output``, classifies the rest with one :class:`Router` (one
budget and rate limit for all workers) and appends each answered row to ``output`` in whole
rows, so a job killed at any moment resumes where it stopped:

- ``.jsonl`` / ``.csv`` outputs are appended to; a torn last line (``kill -9`` mid-write) is
  cut off on resume;
- ``.parquet`` cannot be appended to: rows go to a journal beside it
  (``OUTPUT.parts/*.jsonl``), merged into ``OUTPUT`` when the job ends (also on Ctrl-C);
  until then ``OUTPUT`` is the last complete file.

With the LLM in play rows are answered ``concurrency`` at a time and written as they finish
(so the output order may differ from the input's); without it the local models answer in
vectorised chunks. ``--engine ray`` runs the same job on Ray Data (:mod:`.ray_engine`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from pathlib import Path
from typing import Any, Literal

from llm_router.chain import local_order
from llm_router.corpus.rows import Item, check_paths, fast_records, first_row, iter_items
from llm_router.corpus.sink import Sink, output_row
from llm_router.corpus.tally import CorpusSummary, Tally
from llm_router.errors import ConfigError
from llm_router.llm.budget import Budget
from llm_router.records import DataError
from llm_router.registry import nothing_can_answer
from llm_router.router import Router
from llm_router.schemas import Classification
from llm_router.settings import Settings

logger = logging.getLogger(__name__)

Engine = Literal["local", "ray"]


# -- the job ---------------------------------------------------------------------------------
def classify_file(
    input: str | Path,  # noqa: A002 - the CLI's name for it
    output: str | Path,
    *,
    settings: Settings | None = None,
    text_field: str = "abstract",
    title_field: str | None = "title",
    id_field: str = "id",
    concurrency: int = 8,
    rpm: float | None = None,
    max_requests: int | None = None,
    max_cost_usd: float | None = None,
    max_tokens: int | None = None,
    engine: Engine = "local",
    ray_address: str | None = None,
    ray_workers: int | None = None,
    chunk_size: int = 1024,
    progress: bool | None = None,
    workers: int | None = None,
) -> CorpusSummary:
    """Classify every row of ``input`` not yet in ``output``; returns what this run did.

    ``workers``: processes for the local models when no LLM is configured (default: one per
    CPU, at most 4; started only for jobs of more than a few thousand rows).

    ``progress=None`` shows a progress bar when stderr is a terminal. Ctrl-C stops the job,
    keeps every row already answered and re-raises :class:`KeyboardInterrupt` with the
    partial summary as its ``summary`` attribute.

    Raises:
        DataError: INPUT missing, unreadable or without the id field; OUTPUT of another kind.
        ConfigError: invalid settings or options.
    """
    input_path, output_path = Path(input), Path(output)
    check_paths(input_path, output_path)
    job = _job_key(input_path, text_field, title_field, id_field)
    finished = _finished_summary(output_path, job)
    if finished is not None:  # nothing changed since this job last finished
        return finished
    if concurrency < 1:
        raise ConfigError(f"--concurrency must be at least 1, got {concurrency}")
    settings = settings or Settings()
    standing = nothing_can_answer(settings, local_order(settings)[0])
    if standing is not None:  # said at once, before the input is read
        raise ConfigError(standing)
    if rpm is not None:
        if not rpm > 0:
            raise ConfigError(f"--rpm must be positive, got {rpm}")
        settings = settings.model_copy(update={"rpm": rpm})
    if engine == "ray":
        from llm_router.corpus.ray_engine import classify_file_ray

        summary: CorpusSummary = classify_file_ray(
            input_path,
            output_path,
            settings=settings,
            text_field=text_field,
            title_field=title_field,
            id_field=id_field,
            concurrency=concurrency,
            max_requests=max_requests,
            max_cost_usd=max_cost_usd,
            max_tokens=max_tokens,
            address=ray_address,
            workers=ray_workers,
            chunk_size=chunk_size,
        )
    elif engine == "local":
        summary = _run_local(
            input_path,
            output_path,
            settings,
            (text_field, title_field, id_field),
            Budget(max_requests=max_requests, max_tokens=max_tokens, max_cost_usd=max_cost_usd),
            concurrency=concurrency,
            chunk_size=chunk_size,
            progress=progress,
            workers=workers if workers is not None else min(4, os.cpu_count() or 1),
        )
    else:
        raise ConfigError(f"--engine must be local or ray, got {engine!r}")
    _write_finished(output_path, job, summary)
    return summary


def _run_local(
    input_path: Path,
    output_path: Path,
    settings: Settings,
    fields: tuple[str, str | None, str],
    budget: Budget,
    *,
    concurrency: int,
    chunk_size: int,
    progress: bool | None,
    workers: int,
) -> CorpusSummary:
    """The local engine: this machine's threads and processes, one Router for them all."""
    text_field, title_field, id_field = fields
    started = time.perf_counter()
    first = first_row(input_path)  # a missing id field fails at once
    if first is not None and id_field not in first:
        raise DataError(
            f"{input_path}: no id field {id_field!r} in the input (its fields: "
            f"{', '.join(list(first)[:8])}); pass --id-field"
        )
    sink = Sink(output_path)
    tally = Tally()
    tally.summary.output = str(output_path)
    done = sink.final_rows()
    router = _LazyRouter(settings, budget)  # built at the first row to classify
    items = iter_items(
        fast_records(input_path, id_field, done),
        text_field=text_field,
        title_field=title_field,
        id_field=id_field,
        done=done,
        tally=tally,
    )
    bar = _progress(progress, tally, budget)
    try:
        if settings.api_key is not None:
            _run_streaming(router, items, sink, tally, concurrency, bar)
        else:
            _run_chunked(router, items, sink, tally, chunk_size, bar, workers)
    except KeyboardInterrupt as interrupt:
        tally.summary.interrupted = True
        interrupt.summary = tally.summary  # type: ignore[attr-defined]
        raise
    finally:  # every exit path: workers stopped, OUTPUT closed (the parquet journal merged)
        _close(sink, router, bar)
        tally.summary.wall_s = time.perf_counter() - started
        tally.finish()
    return tally.summary


# -- a finished job ---------------------------------------------------------------------------
# After a job has gone through its whole input, ``OUTPUT.done`` records the input and output
# as they were (size, mtime, inode) and the counts. Run again on the same files, unchanged,
# the job answers from it without reading the input; any change means a full resume.
def _done_path(output_path: Path) -> Path:
    return output_path.with_name(output_path.name + ".done")


def _stat(path: Path) -> list[int]:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns, info.st_ino]


def _job_key(path: Path, text_field: str, title_field: str | None, id_field: str) -> dict[str, Any]:
    return {
        "input": str(path.resolve()),
        "input_stat": _stat(path),
        "fields": [text_field, title_field, id_field],
    }


def _finished_summary(output_path: Path, job: dict[str, Any]) -> CorpusSummary | None:
    started = time.perf_counter()
    marker = _done_path(output_path)
    try:
        saved = json.loads(marker.read_text(encoding="utf-8"))
        if saved["job"] != job or saved["output_stat"] != _stat(output_path):
            return None
        summary = CorpusSummary.model_validate(saved["summary"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return summary.model_copy(update={"wall_s": time.perf_counter() - started})


def _write_finished(output_path: Path, job: dict[str, Any], summary: CorpusSummary) -> None:
    """Record a finished job, unless rows are left that the next run should ask again."""
    if summary.interrupted or summary.retryable() or not output_path.is_file():
        _done_path(output_path).unlink(missing_ok=True)
        return
    record = {"job": job, "output_stat": _stat(output_path), "summary": summary.model_dump()}
    try:
        _done_path(output_path).write_text(json.dumps(record) + "\n", encoding="utf-8")
    except OSError as exc:
        logger.warning("could not record the finished job beside %s: %s", output_path, exc)


class _LazyRouter:
    """The job's Router, built on first use: a resume with nothing left loads no model."""

    def __init__(self, settings: Settings, budget: Budget) -> None:
        self.settings = settings
        self.budget = budget
        self._router: Router | None = None

    def get(self) -> Router:
        if self._router is None:
            self._router = Router.from_settings(self.settings, budget=self.budget)
        return self._router

    def close(self) -> None:
        if self._router is not None:
            self._router.close()


def _close(sink: Sink, router: _LazyRouter, bar: Any) -> None:
    sink.close()
    router.close()
    if bar is not None:
        bar.close()


def _progress(enabled: bool | None, tally: Tally, budget: Budget) -> Any:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(desc="classify", unit="row", file=sys.stderr, dynamic_ncols=True)
    bar.tally = tally
    bar.budget = budget
    return bar


def _tick(bar: Any, n: int) -> None:
    if bar is None:
        return
    bar.update(n)
    snap = bar.budget.snapshot()
    bar.set_postfix(
        skipped=bar.tally.summary.skipped, req=snap["requests"], usd=f"{snap['spent_usd']:.4f}"
    )


def _run_chunked(
    router: _LazyRouter,
    items: Iterator[Item],
    sink: Sink,
    tally: Tally,
    chunk_size: int,
    bar: Any,
    workers: int,
) -> None:
    """Local models answer: vectorised chunks, each written in one append, in input order.

    The first chunks are answered in this process. A job with more left than that starts
    ``workers`` processes (each loads the local models once; BLAS held to one thread, as its
    extra threads only spin on these matrix sizes): this process reads and writes while they
    classify, so the job uses every core instead of one. A small job never pays their
    start-up.
    """
    chunks = _chunks(items, chunk_size)
    for _ in range(IN_PROCESS_CHUNKS if workers > 1 else -1):
        chunk = next(chunks, None)
        if chunk is None:
            return
        _write_chunk(chunk, router.get().classify_batch([i.text for i in chunk]), sink, tally, bar)
    if workers <= 1:
        for chunk in chunks:
            results = router.get().classify_batch([i.text for i in chunk])
            _write_chunk(chunk, results, sink, tally, bar)
        return
    pool = _WorkerPool(workers, router.settings)
    queued: list[tuple[list[Item], Future[list[Any]]]] = []
    finished = False
    try:
        for chunk in chunks:
            queued.append((chunk, pool.submit(_classify_in_worker, chunk)))
            while len(queued) > 2 * workers or (queued and queued[0][1].done()):
                _write_first(queued, sink, tally, bar)
        while queued:
            _write_first(queued, sink, tally, bar)
        finished = True
    except KeyboardInterrupt:
        # Chunks the workers have finished are written; the rest are asked again next run.
        for _chunk, future in queued:
            if future.done() and not future.cancelled() and future.exception() is None:
                _write_rows(future.result(), sink, tally, bar)
        raise
    finally:
        if not finished:  # Ctrl-C or an error: stop the workers now, do not wait for them
            # (3.11 has no public terminate; an orphaned worker would keep the job's
            # stdout open and live on after it)
            for process in list((pool._processes or {}).values()):
                process.terminate()
        pool.shutdown(wait=finished, cancel_futures=True)


IN_PROCESS_CHUNKS = 4  # answered before worker processes are worth starting
_worker_router: Router | None = None


class _WorkerPool(ProcessPoolExecutor):
    """The job's worker processes, which Ctrl-C never reaches: the job handles it (it writes
    what the workers finished, then stops them).

    A worker ignores SIGINT once started (:func:`_start_worker`), but it takes a second or more
    to get there (a fresh interpreter importing the models). A Ctrl-C in that window, sent to
    the whole process group as a terminal does, killed it with a traceback. So processes are
    started (at a submit) with SIGINT blocked: the mask is inherited, the signal waits in the
    new process, and it is discarded when the worker sets it to be ignored.
    """

    def __init__(self, workers: int, settings: Settings) -> None:
        super().__init__(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(settings,),
        )

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        with _sigint_blocked():
            return super().submit(fn, *args, **kwargs)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread for the block (and in any process it starts); a
    Ctrl-C meanwhile is delivered when the block ends."""
    if threading.current_thread() is not threading.main_thread() or os.name != "posix":
        yield  # signals are handled by the main thread only (and masks are POSIX's)
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _start_worker(settings: Settings) -> None:
    """A worker process: one Router (local models only, no LLM key) and one BLAS thread."""
    global _worker_router
    # Ctrl-C is the job's to handle: ignored here, then unblocked (it was blocked at start,
    # so one sent meanwhile has waited, and is discarded now).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.name == "posix":
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    # The job's own process has said why the LLM is skipped; its workers need not repeat it.
    logging.getLogger("llm_router").setLevel(logging.ERROR)
    _worker_router = Router.from_settings(settings)
    import numpy  # noqa: F401 - loads the BLAS the limit applies to

    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
    except ImportError:  # scikit-learn brings it; without it BLAS is left as it is
        pass


def _classify_in_worker(chunk: list[Item]) -> list[dict[str, Any]]:
    """The output rows of a chunk (plain dicts travel back faster than pydantic models)."""
    assert _worker_router is not None
    results = _worker_router.classify_batch([i.text for i in chunk])
    return [output_row(i.id, r) for i, r in zip(chunk, results, strict=True)]


@contextlib.contextmanager
def _whole() -> Iterator[None]:
    """Ctrl-C waits for the end of the block: rows are written and counted together, or
    neither, so the summary counts exactly the rows OUTPUT holds.

    Python raises :class:`KeyboardInterrupt` between any two bytecodes; without this, one
    landing between a chunk's count and its write left the summary counting rows that were
    never written. The handler in force (Python's own, or the caller's) still runs, once the
    block is done; off the main thread, where no signal handler runs, this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):  # ignored, or the default action: nothing to defer
        yield
        return
    caught: list[tuple[int, Any]] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        previous(*caught[0])


def _write_first(
    queued: list[tuple[list[Item], Future[list[Any]]]], sink: Sink, tally: Tally, bar: Any
) -> None:
    """Wait for the oldest chunk in the workers, then write it and take it off the queue."""
    rows = queued[0][1].result()  # Ctrl-C while waiting: the chunk stays queued
    with _whole():
        _write_rows(rows, sink, tally, bar)
        queued.pop(0)


def _write_rows(rows: list[dict[str, Any]], sink: Sink, tally: Tally, bar: Any) -> None:
    with _whole():
        sink.write(rows)
        for row in rows:
            tally.add_row(row)
    _tick(bar, len(rows))


def _write_chunk(chunk: list[Item], results: list[Any], sink: Sink, tally: Tally, bar: Any) -> None:
    with _whole():
        sink.write([output_row(i.id, r) for i, r in zip(chunk, results, strict=True)])
        for result in results:
            tally.add(result)
    _tick(bar, len(chunk))


def _chunks(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _run_streaming(
    router: _LazyRouter,
    items: Iterator[Item],
    sink: Sink,
    tally: Tally,
    concurrency: int,
    bar: Any,
) -> None:
    """The LLM answers: ``concurrency`` rows in flight, each written as it finishes."""
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="corpus")
    inflight: dict[Future[Classification | Exception], Item] = {}

    def write(finished: list[Future[Classification | Exception]]) -> None:
        with _whole():  # written, counted and taken out of flight together
            results = [(inflight.pop(future), future.result()) for future in finished]
            sink.write([output_row(item.id, result) for item, result in results])
            for _item, result in results:
                tally.add(result)
        _tick(bar, len(finished))

    def drain(block_until: int) -> None:
        while len(inflight) > block_until:
            finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            write(list(finished))

    try:
        for item in items:
            drain(2 * concurrency - 1)
            inflight[pool.submit(_one_row, router.get(), item.text)] = item
        drain(0)
    except KeyboardInterrupt:
        # Rows already answered are written; rows in flight are left (a re-run asks again,
        # or finds them in the cache), so the job stops at once.
        write([f for f in inflight if f.done() and not f.cancelled()])
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _one_row(router: Router, text: object) -> Classification | Exception:
    result: Classification | Exception = router.classify_batch([text], concurrency=1)[0]
    return result
