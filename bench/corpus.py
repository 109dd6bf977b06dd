"""The corpus job on the 91,219 shared abstracts, with the TF-IDF model answering (no key).

- ``--engine local``: rows/s of ``python -m llm_router classify`` (reading, classifying and
  writing, start-up included) and its ratio to the model's own batched prediction on the
  same texts in this process (``classify_batch`` in chunks of 1024, no I/O);
- ``--engine ray`` on a local Ray started on demand: rows/s and its ratio to the local engine;
- peak resident memory of each (the whole process tree: Ray's daemons and workers included);
- a resume of the finished job (every id already written) as a share of the first run, with
  its ``OUTPUT.done`` record and, again, without it (every input row read, none parsed twice);
- whether both engines gave the same label to every row.

Run: python bench/corpus.py --out bench/results/corpus.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ABSTRACTS, emit, save  # noqa: E402
from bench._procs import PeakSampler  # noqa: E402


def run_job(source: Path, out: Path, *extra: str) -> dict[str, float | str]:
    command = [sys.executable, "-m", "llm_router", "classify", str(source), "-o", str(out)]
    started = time.perf_counter()
    process = subprocess.Popen(
        [*command, *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    with PeakSampler(process.pid) as sampler:
        stdout, _ = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with {process.returncode}")
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(sampler.peak / 2**20),
        "summary": stdout.strip().splitlines()[-1],
    }


def in_process_rows_per_s(source: Path, models: Path) -> float:
    from fallback_models.tfidf import TfidfClassifier
    from llm_router.records import read_records, record_text

    model = TfidfClassifier.load(models / "tfidf")
    texts = [str(record_text(r, "abstract", "title")).strip() for r in read_records(source)]
    model.classify_batch(texts[:256])
    started = time.perf_counter()
    for i in range(0, len(texts), 1024):
        model.classify_batch(texts[i : i + 1024])
    return len(texts) / (time.perf_counter() - started)


def labels(path: Path) -> dict[str, str]:
    return {row["id"]: row["label"] for row in map(json.loads, path.read_text().splitlines())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ABSTRACTS)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="corpus-bench-"))
    rows = sum(1 for _ in __import__("gzip").open(args.data, "rt"))
    baseline = in_process_rows_per_s(args.data, args.models)
    local = run_job(args.data, work / "local.jsonl")
    resume = run_job(args.data, work / "local.jsonl")
    (work / "local.jsonl.done").unlink()  # the same, without the finished-job record
    rescan = run_job(args.data, work / "local.jsonl")
    results: dict[str, object] = {
        "rows": rows,
        "in_process_batched_rows_per_s": round(baseline),
        "local": {**local, "rows_per_s": round(rows / float(local["wall_s"]))},
        "local_over_in_process": round(rows / float(local["wall_s"]) / baseline, 3),
        "resume": resume,
        "resume_share_of_first_run": round(float(resume["wall_s"]) / float(local["wall_s"]), 3),
        "resume_full_scan": rescan,
        "resume_full_scan_share": round(float(rescan["wall_s"]) / float(local["wall_s"]), 3),
    }
    if not args.skip_ray:
        ray = run_job(args.data, work / "ray.jsonl", "--engine", "ray")
        results["ray"] = {**ray, "rows_per_s": round(rows / float(ray["wall_s"]))}
        results["ray_over_local"] = round(float(local["wall_s"]) / float(ray["wall_s"]), 3)
        a, b = labels(work / "local.jsonl"), labels(work / "ray.jsonl")
        results["same_labels"] = sum(a[k] == b.get(k) for k in a)
    emit("corpus", results)
    save(results, args.out)


if __name__ == "__main__":
    main()
