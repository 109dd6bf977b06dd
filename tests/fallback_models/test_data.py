"""Data loading from every supported source, and the deterministic split."""

from __future__ import annotations

import csv
import json
import time

import pytest

from fallback_models.data import DataError, load_papers, split_ids

ROWS = [
    {"id": "2501.00001", "title": "A", "abstract": "First abstract.", "primary_category": "cs.CV"},
    {
        "id": "2501.00002",
        "title": "B",
        "abstract": "Second abstract.",
        "primary_category": "math.MP",
    },
]


def test_reads_jsonl_gz_from_the_shared_data(sample_file):
    papers = load_papers(str(sample_file))
    assert len(papers) == 4000
    assert all(p.abstract and p.primary_category and p.id for p in papers)
    assert papers[0].text.startswith(papers[0].title)


def test_reads_jsonl_csv_and_parquet(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    path_csv = tmp_path / "d.csv"
    with path_csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["abstract", "primary_category"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("abstract", "primary_category")} for r in ROWS)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.csv", "d.parquet"):
        papers = load_papers(str(tmp_path / name))
        assert [p.primary_category for p in papers] == ["cs.CV", "math.MP"]
    csv_ids = [p.id for p in load_papers(str(path_csv))]
    assert csv_ids == [p.id for p in load_papers(str(path_csv))]  # derived ids are stable
    assert all(i.startswith("sha1:") for i in csv_ids)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"abstract": "x"}\n', "primary_category"),
        ("not json\n", "bad.jsonl line 1: not valid JSON"),
        ("[1, 2]\n", "not a JSON object"),
    ],
)
def test_bad_files_raise_a_clear_data_error(tmp_path, content, words):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=words):
        load_papers(str(path))


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_papers(str(tmp_path / "missing.jsonl.gz"))


def test_an_unreachable_hub_fails_fast_with_advice(monkeypatch):
    import socket

    with socket.socket() as probe:  # a port on 127.0.0.1 that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")  # never leave the machine
    started = time.monotonic()
    with pytest.raises(DataError, match="--data"):
        load_papers("real-jiakai/arxiver-with-category")
    assert time.monotonic() - started < 15


def test_split_is_deterministic_stratified_and_disjoint():
    ids = [f"id{i}" for i in range(1000)]
    labels = ["a"] * 700 + ["b"] * 290 + ["c"] * 10
    train, test = split_ids(ids, labels, test_fraction=0.1, seed=7)
    assert (train, test) == split_ids(
        list(reversed(ids)), list(reversed(labels)), test_fraction=0.1, seed=7
    )
    assert set(train).isdisjoint(test) and len(train) + len(test) == 1000
    by_id = dict(zip(ids, labels, strict=True))
    assert sorted(by_id[i] for i in test).count("a") == 70
    assert sorted(by_id[i] for i in test).count("c") == 1
    assert split_ids(ids, labels, seed=8)[1] != test
