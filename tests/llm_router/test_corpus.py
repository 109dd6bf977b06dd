"""The corpus job: formats, resume after kill -9 and Ctrl-C, bad rows, budget, Ray."""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_router.corpus.job import classify_file
from llm_router.corpus.sink import COLUMNS
from llm_router.records import DataError
from llm_router.testing import ChatServer, Reply
from tests.conftest import TEST_KEY, default_sigint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def corpus(tmp_path, sample_rows):
    """300 real rows as .jsonl, the first row's id in arXiv's old style (0705.1862)."""
    rows = [
        {"id": r["id"], "title": r.get("title", ""), "abstract": r["abstract"]}
        for r in sample_rows[:300]
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


@pytest.fixture
def local_env(monkeypatch, trained_models, tmp_path):
    monkeypatch.setenv("LLM_ROUTER_MODEL_DIR", str(trained_models))
    monkeypatch.setenv("LLM_ROUTER_CACHE_DIR", str(tmp_path / "cache"))
    return monkeypatch


def read_output(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def write_as(rows: list[dict], path: Path) -> Path:
    if path.name.endswith(".jsonl.gz"):
        with gzip.open(path, "wt") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in rows)
    elif path.suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix_in", [".jsonl", ".jsonl.gz", ".csv", ".parquet"])
@pytest.mark.parametrize("suffix_out", [".jsonl", ".csv", ".parquet"])
def test_every_format_in_and_out_gives_the_same_labels(
    local_env, tmp_path, corpus, suffix_in, suffix_out
):
    _, rows = corpus
    source = write_as(rows[:40], tmp_path / f"first40{suffix_in}")
    out = tmp_path / f"out{suffix_out}"
    summary = classify_file(source, out)
    written = read_output(out)
    assert summary.read == summary.classified == len(written) == 40
    assert summary.by_source == {"tfidf": 40} and summary.failed == 0
    assert list(written[0]) == list(COLUMNS)
    assert all(0.0 < float(w["confidence"]) <= 1.0 for w in written)
    assert [w["id"] for w in written] == [r["id"] for r in rows[:40]]
    assert all(isinstance(w["id"], str) for w in written)
    reference = classify_file(corpus[0], tmp_path / "ref.jsonl")
    assert reference.classified == 300
    labels = {w["id"]: w["label"] for w in read_output(tmp_path / "ref.jsonl")}
    assert all(labels[w["id"]] == w["label"] for w in written)


def test_ids_stay_strings_with_their_leading_zero(local_env, tmp_path, corpus):
    _, rows = corpus
    odd = [{**rows[0], "id": "0705.1862"}, {**rows[1], "id": 42}, {**rows[2], "id": "x-7"}]
    for suffix in (".csv", ".jsonl"):
        out = tmp_path / f"ids{suffix}.jsonl"
        classify_file(write_as(odd, tmp_path / f"ids{suffix}"), out)
        assert [r["id"] for r in read_output(out)] == ["0705.1862", "42", "x-7"]


def test_a_second_run_skips_every_row_and_sends_nothing(local_env, tmp_path, corpus):
    path, _ = corpus
    with ChatServer() as server:
        local_env.setenv("LLM_ROUTER_API_KEY", TEST_KEY)
        local_env.setenv("LLM_ROUTER_BASE_URL", server.url)
        local_env.setenv("LLM_ROUTER_CACHE", "off")
        out = tmp_path / "out.jsonl"
        first = classify_file(path, out, concurrency=4)
        assert first.classified == 300 and server.count == 300 and first.requests == 300
        again = classify_file(path, out, concurrency=4)  # the finished job's own summary
        assert again.model_dump(exclude={"wall_s"}) == first.model_dump(exclude={"wall_s"})
        out.with_name("out.jsonl.done").unlink()  # a full resume: every id is skipped
        resumed = classify_file(path, out, concurrency=4)
        assert (resumed.read, resumed.skipped, resumed.classified) == (300, 300, 0)
        assert server.count == 300
    assert len(read_output(out)) == 300


def test_bad_rows_are_written_or_counted_and_never_stop_the_job(local_env, tmp_path, corpus):
    _, rows = corpus
    bad = [
        rows[0],
        {"id": "empty", "abstract": "   "},
        {"id": "number", "abstract": 12345},
        {"id": rows[0]["id"], "abstract": "a repeated id"},
        {"id": None, "abstract": "no id"},
        {"id": "", "abstract": "empty id"},
        {"id": "absent"},  # no text field at all
        rows[1],
    ]
    out = tmp_path / "out.csv"
    summary = classify_file(write_as(bad, tmp_path / "bad.jsonl"), out)
    written = {r["id"]: r for r in read_output(out)}
    assert list(written) == [rows[0]["id"], "empty", "number", "absent", rows[1]["id"]]
    assert written["empty"]["error"].startswith("invalid_input: ")
    assert written["number"]["error"].startswith("invalid_input: ")
    assert written["empty"]["label"] == "" and written[rows[1]["id"]]["error"] == ""
    assert (summary.read, summary.classified, summary.failed) == (8, 2, 6)
    assert summary.failed_by_reason == {"invalid_input": 3, "duplicate_id": 1, "missing_id": 2}


def test_unusable_inputs_exit_2_with_one_line(local_env, tmp_path, corpus):
    _, rows = corpus
    no_id = write_as([{"key": "a", "abstract": "text"}], tmp_path / "noid.jsonl")
    corrupt = tmp_path / "corrupt.jsonl.gz"
    corrupt.write_bytes(gzip.compress(b'{"id": "1", "abstract": "x"}\n' * 50)[:-20])
    bad_parquet = tmp_path / "bad.parquet"
    bad_parquet.write_bytes(b"PAR1 not really")
    cases = [
        (no_id, "no id field 'id'"),
        (corrupt, "cannot read"),
        (bad_parquet, "cannot read"),
        (tmp_path / "missing.jsonl", "not found"),
    ]
    for source, words in cases:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "llm_router",
                "classify",
                str(source),
                "-o",
                str(tmp_path / "o.jsonl"),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert done.returncode == 2, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and words in errors[0], done.stderr
        assert done.stderr.strip().splitlines()[-1] == errors[0] and "Traceback" not in done.stderr
    with pytest.raises(DataError, match="unsupported output"):
        classify_file(no_id, tmp_path / "out.txt")


def test_the_budget_holds_across_workers_and_the_rest_falls_back(local_env, tmp_path, corpus):
    path, _ = corpus
    with ChatServer() as server:
        server.default = lambda _b: Reply.answer("cs.CV", delay_s=0.02)
        local_env.setenv("LLM_ROUTER_API_KEY", TEST_KEY)
        local_env.setenv("LLM_ROUTER_BASE_URL", server.url)
        out = tmp_path / "out.jsonl"
        summary = classify_file(path, out, concurrency=8, max_requests=7)
    written = read_output(out)
    assert server.count == 7 and summary.requests == 7
    assert len(written) == 300 and summary.classified == 300
    assert summary.by_source == {"llm": 7, "tfidf": 293}
    assert sum(r["fallback_reason"] == "budget" for r in written) == 293


def _job(source: Path, out: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "llm_router", "classify", str(source), "-o", str(out)]
    return subprocess.Popen(
        [*command, "--concurrency", "2"],
        cwd=ROOT,
        preexec_fn=default_sigint,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _rerun(source: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "llm_router", "classify", str(source), "-o", str(out)]
    return subprocess.run(
        command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def _wait_for_rows(out: Path, n: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if out.is_file() and out.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} rows in {out} after {timeout_s} s")


def _llm_env(server: ChatServer, trained_models: Path, tmp_path: Path) -> dict[str, str]:
    return {
        "LLM_ROUTER_API_KEY": TEST_KEY,
        "LLM_ROUTER_BASE_URL": server.url,
        "LLM_ROUTER_MODEL_DIR": str(trained_models),
        "LLM_ROUTER_CACHE_DIR": str(tmp_path / "cache"),
        "LLM_ROUTER_CACHE": "off",  # every row asked again would show on the server
    }


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_after_kill_9_has_no_duplicate_and_no_missing_id(
    trained_models, tmp_path, corpus, suffix
):
    path, rows = corpus
    out = tmp_path / f"out{suffix}"
    with ChatServer() as server:
        server.default = lambda _b: Reply.answer("cs.CV", delay_s=0.01)
        env = _llm_env(server, trained_models, tmp_path)
        job = _job(path, out, env)
        _wait_for_rows(out, 40)
        job.send_signal(signal.SIGKILL)
        job.communicate(timeout=60)  # reaps it and closes its pipes
        before = {r["id"] for r in read_output(out)}
        assert 0 < len(before) < 300
        server.requests.clear()
        done = _rerun(path, out, env)
        assert done.returncode == 0, done.stderr
        asked = [r.body["messages"][1]["content"] for r in server.requests]
    ids = [r["id"] for r in read_output(out)]
    assert len(ids) == len(set(ids)) == 300 and set(ids) == {r["id"] for r in rows}
    assert len(asked) == 300 - len(before)
    texts = {r["id"]: r["abstract"][:200] for r in rows}
    assert not any(texts[i] in message for i in before for message in asked)
    assert (
        done.stdout.strip().splitlines()[-1].startswith(f"read=300 classified={300 - len(before)}")
    )


def test_ctrl_c_stops_at_once_keeps_rows_and_exits_130(trained_models, tmp_path, corpus):
    import threading

    path, _ = corpus
    out = tmp_path / "out.jsonl"
    release = threading.Event()

    def held(_body):
        release.wait(300)  # in flight until the job has exited: it must not wait for them
        return Reply.answer("cs.CV")

    with ChatServer() as server:
        server.default = lambda _b: Reply.answer("cs.CV", delay_s=0.05)
        job = _job(path, out, _llm_env(server, trained_models, tmp_path))
        _wait_for_rows(out, 10)
        server.default = held
        job.send_signal(signal.SIGINT)
        try:
            stdout, stderr = job.communicate(timeout=240)
        finally:
            release.set()
    assert job.returncode == 130, stderr
    kept = read_output(out)
    summary = stdout.strip().splitlines()[-1]
    assert "interrupted=true" in summary and f"classified={len(kept)}" in summary
    assert len({r["id"] for r in kept}) == len(kept) >= 10


def test_a_torn_last_row_is_cut_off_and_asked_again(local_env, tmp_path, corpus):
    path, rows = corpus
    out = tmp_path / "out.jsonl"
    classify_file(path, out)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:100]) + lines[100][:37])  # a crash mid-row
    summary = classify_file(path, out)
    assert (summary.skipped, summary.classified) == (100, 200)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [
        r["id"] for r in rows
    ]


def test_parquet_output_is_whole_after_a_kill_and_merged_on_resume(
    trained_models, tmp_path, corpus
):
    path, rows = corpus
    out = tmp_path / "out.parquet"
    with ChatServer() as server:
        server.default = lambda _b: Reply.answer("cs.CV", delay_s=0.01)
        env = _llm_env(server, trained_models, tmp_path)
        job = _job(path, out, env)
        journal = out.with_name(out.name + ".parts")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            parts = list(journal.glob("*.jsonl")) if journal.is_dir() else []
            if parts and sum(p.read_bytes().count(b"\n") for p in parts) >= 20:
                break
            time.sleep(0.05)
        job.send_signal(signal.SIGKILL)
        job.communicate(timeout=60)  # reaps it and closes its pipes
        assert not out.exists()  # never a half-written parquet file
        done = _rerun(path, out, env)
        assert done.returncode == 0, done.stderr
        asked = server.count
    ids = [r["id"] for r in read_output(out)]
    assert sorted(ids) == sorted(r["id"] for r in rows) and not journal.exists()
    assert asked < 300 + 10  # the journaled rows were not asked again (2 may have been in flight)


def test_the_ray_engine_gives_the_local_engines_labels(local_env, tmp_path, corpus):
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    import ray

    path, _ = corpus
    classify_file(path, tmp_path / "local.jsonl")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        summary = classify_file(path, tmp_path / "ray.csv", engine="ray")
        again = classify_file(path, tmp_path / "ray.csv", engine="ray")
    finally:
        ray.shutdown()
    local = {r["id"]: r["label"] for r in read_output(tmp_path / "local.jsonl")}
    remote = {r["id"]: r["label"] for r in read_output(tmp_path / "ray.csv")}
    assert summary.engine == "ray" and summary.classified == 300 and remote == local
    assert again.model_dump(exclude={"wall_s"}) == summary.model_dump(exclude={"wall_s"})


def test_the_ray_engine_without_ray_exits_2_with_the_install_hint(local_env, tmp_path, corpus):
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from llm_router.__main__ import main\n"
        f"sys.exit(main(['classify', {str(corpus[0])!r}, '-o', {str(tmp_path / 'o.jsonl')!r}, "
        "'--engine', 'ray']))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and 'pip install -e ".[ray]"' in done.stderr


def test_a_finished_job_answers_from_its_record_until_a_file_changes(local_env, tmp_path, corpus):
    path, rows = corpus
    source = write_as(
        [*rows[:50], {"id": None, "abstract": "no id"}, rows[0]], tmp_path / "a.jsonl"
    )
    out = tmp_path / "out.jsonl"
    first = classify_file(source, out)
    assert (first.read, first.classified, first.failed) == (52, 50, 2)
    assert out.with_name("out.jsonl.done").is_file()
    again = classify_file(source, out)  # unchanged: the finished job's own summary, at once
    assert again.model_dump(exclude={"wall_s"}) == first.model_dump(exclude={"wall_s"})
    assert again.failed_by_reason == {"missing_id": 1, "duplicate_id": 1}
    with source.open("a") as handle:  # new rows arrive: a real resume
        handle.writelines(json.dumps(r) + "\n" for r in rows[50:60])
    grown = classify_file(source, out)
    assert (grown.read, grown.skipped, grown.classified) == (62, 50, 10)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-5]))  # rows removed from the output are asked again
    shrunk = classify_file(source, out)
    assert (shrunk.skipped, shrunk.classified) == (55, 5)
    assert len(read_output(out)) == 60


def test_a_large_job_classifies_in_worker_processes_with_the_same_labels(
    local_env, tmp_path, corpus
):
    path, rows = corpus
    classify_file(path, tmp_path / "one.jsonl", workers=1)
    summary = classify_file(path, tmp_path / "two.csv", workers=2, chunk_size=25)  # 12 chunks
    assert (summary.read, summary.classified, summary.by_source) == (300, 300, {"tfidf": 300})
    one = read_output(tmp_path / "one.jsonl")
    two = read_output(tmp_path / "two.csv")
    assert [r["id"] for r in two] == [r["id"] for r in rows]  # input order kept
    assert [r["label"] for r in two] == [r["label"] for r in one]


def _ray_llm_job(local_env, tmp_path, rows, cpus: int, **options):
    """Twelve rows through the Ray engine against the scripted LLM on a local Ray of
    ``cpus`` CPUs; returns the summary and the server's request times."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    import ray

    source = write_as(rows[:12], tmp_path / "twelve.jsonl")
    with ChatServer() as server:
        local_env.setenv("LLM_ROUTER_API_KEY", TEST_KEY)
        local_env.setenv("LLM_ROUTER_BASE_URL", server.url)
        local_env.setenv("LLM_ROUTER_CACHE", "off")
        ray.init(
            num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False
        )
        try:
            summary = classify_file(source, tmp_path / "out.jsonl", engine="ray", **options)
        finally:
            ray.shutdown()
        return summary, sorted(r.at for r in server.requests)


def test_the_rpm_limit_holds_for_all_ray_workers_together(local_env, tmp_path, corpus):
    # 3 CPUs: two classifying actors, and one left for the read and write tasks
    summary, times = _ray_llm_job(
        local_env, tmp_path, corpus[1], 3, ray_workers=2, rpm=240, chunk_size=6
    )
    assert summary.classified == 12 and summary.by_source == {"llm": 12} and len(times) == 12
    # 240 rpm is one request per 0.25 s for the whole cluster: 12 requests span 11 slots
    # (2.75 s), however the two workers interleave; a rate limit per worker measured 1.7 s.
    # The server sees a request a little after its slot, later on a busy machine (2.55 s once
    # while a BERT trained beside the suite), so the bound leaves 20 % for that.
    assert times[-1] - times[0] >= 11 * 0.25 * 0.8


def test_a_request_budget_smaller_than_the_ray_workers_is_not_split_to_nothing(
    local_env, tmp_path, corpus
):
    """--max-requests 3 with 4 workers: each worker's share was 3 // 4 = 0, so nothing was
    ever sent. Now only as many workers start as there are requests, each may send one."""
    summary, times = _ray_llm_job(
        local_env, tmp_path, corpus[1], 5, ray_workers=4, max_requests=3, chunk_size=3
    )
    # Each worker may send 1; how many workers get a batch is Ray's choice.
    assert 1 <= len(times) <= 3 and summary.requests == len(times)
    assert summary.by_source == {"llm": len(times), "tfidf": 12 - len(times)}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_an_output_of_an_earlier_version_is_refused_before_any_work(
    local_env, tmp_path, corpus, suffix
):
    old = [c if c != "confidence" else "score" for c in COLUMNS]  # before this round
    out = tmp_path / f"old{suffix}"
    if suffix == ".csv":
        out.write_text(",".join(old) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({c: pa.array([], pa.string()) for c in old}), out)
    before = out.read_bytes()
    with pytest.raises(DataError, match="written by an earlier version") as caught:
        classify_file(corpus[0], out)
    assert "confidence" in str(caught.value) and "score" in str(caught.value)
    assert "\n" not in str(caught.value) and out.read_bytes() == before
