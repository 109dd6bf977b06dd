"""TF-IDF, BERT and their ensemble side by side, trained with the commands' defaults.

Runs, in one process tree and one after the other, exactly what a user types:

    python -m fallback_models train tfidf --data DATA --out ROOT [--split S]
    python -m fallback_models train bert  --data DATA --out ROOT [--split S] --cache-dir EMPTY

each under ``/usr/bin/time -v`` (wall time, peak resident memory), with an empty embedding
cache so that BERT's time is that of a first run. The test metrics come from the manifests
(the full test split of each model; the ensemble's are in the BERT manifest). Then it times
inference through the router: ms per text in batches of 256 and one text at a time (median
of 100), for each model alone (``LLM_ROUTER_FALLBACKS=tfidf``, ``bert``, ``ensemble``).

Run: python bench/local_models.py [--split temporal] --out bench/results/local_models.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ABSTRACTS, emit, real_abstracts, save  # noqa: E402

NOTEBOOK_BERT_TINY = {"top1": 0.61, "note": "the original study's bert-tiny, fine-tuned on a GPU"}
FIGURES = ("top1", "top5", "macro_f1", "ece")


def train(kind: str, data: str, root: Path, split: str, cache: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "fallback_models", "train", kind, "--data", data]
    command += ["--out", str(root), "--split", split]
    if kind == "bert":
        command += ["--cache-dir", str(cache)]
    done = subprocess.run(
        ["/usr/bin/time", "-v", *command], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", done.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    assert wall is not None and rss is not None
    parts = [float(p) for p in wall.group(1).split(":")]
    seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    return {
        "command": " ".join(command),
        "wall_s": round(seconds, 1),
        "peak_rss_mb": int(rss.group(1)) // 1024,
    }


def inference(root: Path, kind: str, texts: list[str]) -> dict[str, float]:
    from llm_router import Router, Settings

    settings = Settings(model_dir=root, fallbacks=kind, cache=False, api_key="")
    with Router.from_settings(settings) as router:
        router.classify_batch(texts[:8])  # load the model first
        started = time.perf_counter()
        answers = router.classify_batch(texts[:256])
        batched = (time.perf_counter() - started) / 256
        assert all(getattr(a, "source", None) == kind for a in answers)
        singles = []
        for text in texts[:100]:
            started = time.perf_counter()
            router.classify(text)
            singles.append(time.perf_counter() - started)
    return {
        "batched_ms_per_text": round(batched * 1000, 3),
        "batched_texts_per_s": round(1 / batched, 1),
        "single_text_ms_median": round(statistics.median(singles) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(ABSTRACTS))
    parser.add_argument("--split", choices=("random", "temporal"), default="random")
    parser.add_argument("--root", type=Path, help="model root to train into (default: temp)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or Path(scratch) / "models"
        cache = Path(scratch) / "embeddings"  # empty: BERT's first-run time
        runs = {kind: train(kind, args.data, root, args.split, cache) for kind in ("tfidf", "bert")}
        tfidf = json.loads((root / "tfidf" / "manifest.json").read_text())
        bert = json.loads((root / "bert" / "manifest.json").read_text())
        metrics = {
            "tfidf": tfidf["metrics"],
            "bert": bert["metrics"],
            "ensemble": bert.get("ensemble", {}).get("metrics", {}),
        }
        texts = real_abstracts(256)
        models: dict[str, Any] = {}
        for kind, figures in metrics.items():
            models[kind] = {k: figures.get(k) for k in (*FIGURES, "test_rows")}
            models[kind].update(inference(root, kind, texts))
        results = {
            "split": args.split,
            "training": runs,
            "bert_over_tfidf_time": round(runs["bert"]["wall_s"] / runs["tfidf"]["wall_s"], 1),
            "bert_train_rows": bert["metrics"].get("train_rows"),
            "ensemble": {k: v for k, v in bert.get("ensemble", {}).items() if k != "metrics"},
            "models": models,
            "ensemble_minus_tfidf_top1": round(
                models["ensemble"]["top1"] - models["tfidf"]["top1"], 4
            )
            if models["ensemble"].get("top1") is not None
            else None,
            "yardstick": NOTEBOOK_BERT_TINY,
        }
    save(results, args.out)
    emit("local_models", results)


if __name__ == "__main__":
    main()
