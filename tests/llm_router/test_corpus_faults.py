"""The corpus job under real faults: bad lines, rows nothing could answer, re-runs, Ctrl-C
with worker processes, a missing optional dependency. Each runs the command as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import pytest

from llm_router.corpus.job import _classify_in_worker, _WorkerPool, _write_first
from llm_router.corpus.rows import Item
from llm_router.corpus.sink import COLUMNS, Sink
from llm_router.corpus.tally import Tally
from llm_router.settings import Settings
from llm_router.testing import ChatServer, Reply
from tests.conftest import TEST_KEY, default_sigint

ROOT = Path(__file__).resolve().parents[2]


def classify(
    source: Path, out: Path, env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "llm_router", "classify", str(source), "-o", str(out), *extra]
    return subprocess.run(
        command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )


def summary_of(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    line = done.stdout.strip().splitlines()[-1]
    return dict(pair.split("=", 1) for pair in line.split())


def rows_in(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def rows(sample_rows):
    return [
        {"id": r["id"], "title": r["title"], "abstract": r["abstract"]} for r in sample_rows[:30]
    ]


@pytest.fixture
def local(trained_models, tmp_path):
    return {
        "LLM_ROUTER_MODEL_DIR": str(trained_models),
        "LLM_ROUTER_CACHE_DIR": str(tmp_path / "c"),
    }


def test_bad_lines_are_counted_with_their_numbers_and_every_good_row_is_classified(
    rows, local, tmp_path
):
    lines = [json.dumps(r) for r in rows[:10]]
    lines[2:2] = ["{not json", "[1, 2]", "42"]  # lines 3, 4 and 5
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    done = classify(source, tmp_path / "out.jsonl", local)
    assert done.returncode == 0, done.stderr
    summary = summary_of(done)
    assert (summary["read"], summary["classified"], summary["failed_bad_line"]) == ("13", "10", "3")
    for number in (3, 4, 5):
        assert f"in.jsonl line {number}: not" in done.stderr
    assert [r["id"] for r in rows_in(tmp_path / "out.jsonl")] == [r["id"] for r in rows[:10]]


def test_no_key_and_no_model_is_said_at_once_and_writes_nothing(rows, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = classify(source, tmp_path / "out.jsonl", {"LLM_ROUTER_MODEL_DIR": str(tmp_path / "m")})
    assert done.returncode == 2
    assert (
        done.stderr.strip().splitlines()[-1].startswith("error: nothing can classify: no API key")
    )
    assert not (tmp_path / "out.jsonl").exists()


def test_rows_nothing_could_answer_are_asked_again_and_output_keeps_one_row_per_id(rows, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    with ChatServer() as server:
        env = {
            "LLM_ROUTER_API_KEY": TEST_KEY,
            "LLM_ROUTER_BASE_URL": server.url,
            "LLM_ROUTER_MODEL_DIR": str(tmp_path / "no-models"),
            "LLM_ROUTER_CACHE": "off",
            "LLM_ROUTER_MAX_ATTEMPTS": "1",
            "LLM_ROUTER_BREAKER_THRESHOLD": "1000",
        }
        server.default = lambda _body: Reply(status=503)  # the endpoint is down
        down = classify(source, out, env)
        assert down.returncode == 1
        assert (
            down.stderr.strip().splitlines()[-1]
            == "error: no row could be answered: http_503 (30 of 30 rows)"
        )
        assert summary_of(down)["failed"] == "30"
        assert all(r["error"].startswith("http_503: ") for r in rows_in(out))
        again = classify(source, out, env)  # still down: still failed, never failed=0
        assert again.returncode == 1 and summary_of(again)["failed"] == "30"
        server.default = lambda _body: Reply.answer("math.CO")  # the endpoint is back
        back = classify(source, out, env)
    assert back.returncode == 0, back.stderr
    summary = summary_of(back)
    assert (summary["classified"], summary["failed"], summary["skipped"]) == ("30", "0", "0")
    written = rows_in(out)
    assert sorted(r["id"] for r in written) == sorted(r["id"] for r in rows)  # one row per id
    assert {r["label"] for r in written} == {"math.CO"} and not any(r["error"] for r in written)
    final = summary_of(classify(source, out, env))  # finished: that job's own summary
    assert {**final, "wall_s": ""} == {**summary, "wall_s": ""}


def test_a_rerun_of_a_finished_job_gives_that_jobs_summary(rows, local, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first = summary_of(classify(source, tmp_path / "out.jsonl", local))
    again = summary_of(classify(source, tmp_path / "out.jsonl", local))
    assert first.pop("wall_s") and again.pop("wall_s")
    assert again == first and again["classified"] == "30" and again["source_tfidf"] == "30"


def test_parquet_without_pyarrow_exits_2_before_the_first_row(rows, local, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = (
        "import sys; sys.modules['pyarrow'] = None\n"
        "from llm_router.cli import main\n"
        f"sys.exit(main(['classify', {str(source)!r}, '-o', {str(tmp_path / 'o.parquet')!r}]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **local},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().endswith(".parquet needs pyarrow: pip install pyarrow")
    assert not (tmp_path / "o.parquet.parts").exists()


def test_ctrl_c_with_worker_processes_keeps_every_written_row_and_a_rerun_completes(
    sample_rows, local, tmp_path
):
    rows = [{"id": f"r{i}", "abstract": r["abstract"]} for i, r in enumerate(sample_rows * 3)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "llm_router", "classify", str(source), "-o", str(out)]
    job = subprocess.Popen(
        [*command, "--chunk-size", "64", "--workers", "2"],
        cwd=ROOT,
        env={**os.environ, **local},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a group of its own, as a terminal's foreground job
        preexec_fn=default_sigint,
    )
    while not out.is_file() or out.read_bytes().count(b"\n") < 64 * 5:
        assert job.poll() is None, job.communicate()
        time.sleep(0.05)  # polls for the rows: an order, not a time bound
    os.killpg(job.pid, signal.SIGINT)  # Ctrl-C reaches the job and its workers
    stdout, stderr = job.communicate(timeout=120)
    assert job.returncode in (0, 130), stderr
    assert "Traceback" not in stderr
    kept = rows_in(out)
    assert len({r["id"] for r in kept}) == len(kept)
    if job.returncode == 130:
        assert f"classified={len(kept)}" in stdout.strip().splitlines()[-1]
    rerun = classify(source, out, local)
    assert rerun.returncode == 0
    assert sorted(r["id"] for r in rows_in(out)) == sorted(r["id"] for r in rows)


class _InterruptedWhileCounting(Tally):
    """Counts rows, and receives a real Ctrl-C (SIGINT to this process) at the first."""

    def add_row(self, row, requests=0):
        if self.summary.classified == 0:
            os.kill(os.getpid(), signal.SIGINT)
        super().add_row(row, requests)


def _answered(n: int) -> list[dict]:
    return [
        {**dict.fromkeys(COLUMNS), "id": f"r{i}", "label": "cs.CL", "source": "tfidf"}
        for i in range(n)
    ]


def test_ctrl_c_while_a_chunk_is_counted_leaves_it_written_and_counted_together(tmp_path):
    # Ctrl-C can land between any two bytecodes: here, between the first row's count and the
    # rest. The chunk is written and counted whole, then the interrupt goes on.
    out = tmp_path / "out.jsonl"
    sink, tally = Sink(out), _InterruptedWhileCounting()
    queued = [([], _done_future(_answered(5))), ([], _done_future(_answered(3)))]
    with pytest.raises(KeyboardInterrupt):
        _write_first(queued, sink, tally, None)
    sink.close()
    assert tally.finish().classified == len(rows_in(out)) == 5
    assert len(queued) == 1  # the written chunk left the queue; the next one is still there


def _done_future(value):
    future = Future()
    future.set_result(value)
    return future


def test_a_ctrl_c_while_a_worker_starts_does_not_reach_it(trained_models, tmp_path, sample_rows):
    # Ctrl-C goes to the whole process group, workers included. One arriving while a worker
    # is still starting (a fresh interpreter, long before it ignores SIGINT) killed it.
    settings = Settings(model_dir=trained_models, api_key=None, cache_dir=tmp_path / "c")
    pool = _WorkerPool(1, settings)
    try:
        chunk = [Item(r["id"], r["abstract"]) for r in sample_rows[:3]]
        future = pool.submit(_classify_in_worker, chunk)
        for process in list(pool._processes.values()):  # just started: still booting
            os.kill(process.pid, signal.SIGINT)
        rows = future.result(timeout=300)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    assert [r["id"] for r in rows] == [r["id"] for r in sample_rows[:3]]
    assert all(r["label"] and not r["error"] for r in rows)
