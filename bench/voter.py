"""The LLM as a calibrated voter: does asking the LLM ever make the router worse?

Scripted endpoints (``--accuracy 0.45,0.90``, the default): for each accuracy, a
:class:`~llm_router.testing.ScriptedModel` on 127.0.0.1 that is right with that probability
(its mistakes are the paper's cross-listed categories, else same-archive labels). The product
path end to end:
1. ``python -m eval --calibrate --n 300`` (timed: our overhead, the endpoint answers at once);
2. the router (``Router.from_settings``, the profile it finds) on ``--eval-n`` other held-out
   rows, next to the LLM alone, TF-IDF alone and the router without the profile (uncombined,
   the LLM's answer wins), with accuracy and the ECE of ``confidence``, over all rows and on
   rows where the local model is weak (its top-1 below 0.5, the newest tenth by
   ``published``, the rarest quarter of labels).

A real endpoint (``--endpoint URL --model NAME``, e.g. llama.cpp from scripts/local_llm.sh):
the ``--n`` rows are asked once (with log-probabilities), then scored as the calibration's
report scores them (three folds, each by a fit on the other two), with and without the
log-probabilities. Every row is scored by a fit that did not see it.

Each scripted endpoint is measured twice: asked for the answer's log-probabilities (the
scripted model's belief is higher, on average, when it is right) and not asked (the measured
accuracy alone weighs its vote).

Run: python bench/voter.py --out bench/results/voter.json
     python bench/voter.py --endpoint http://127.0.0.1:8765/v1 --model smollm2 --n 240 \
         --structured-output json_object --out bench/results/voter_smollm2.json
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench._common import ABSTRACTS, emit, save  # noqa: E402
from eval.calibrate import (  # noqa: E402
    cascade_threshold,
    collect,
    figures,
    folds,
    local_model,
    out_of_fold,
)
from eval.sampling import Row, stratified_sample  # noqa: E402
from fallback_models.artifacts import deployed_label_set, test_ids  # noqa: E402
from fallback_models.data import load_papers  # noqa: E402
from fallback_models.scoring import expected_calibration_error  # noqa: E402
from fallback_models.tfidf import TfidfClassifier  # noqa: E402
from llm_router import Router, Settings  # noqa: E402
from llm_router.chain import build_chain  # noqa: E402
from llm_router.llm.ratelimit import RateLimiter  # noqa: E402
from llm_router.schemas import Classification  # noqa: E402
from llm_router.testing import ChatServer, ScriptedModel, Truth, paper_key  # noqa: E402

ENV = (
    "LLM_ROUTER_API_KEY",
    "LLM_ROUTER_BASE_URL",
    "LLM_ROUTER_MODEL",
    "LLM_ROUTER_MODEL_DIR",
    "LLM_ROUTER_FALLBACKS",
    "LLM_ROUTER_CACHE_DIR",
    "LLM_ROUTER_STRATEGY",
    "LLM_ROUTER_STRUCTURED_OUTPUT",
    "LLM_ROUTER_TIMEOUT_S",
    "LLM_ROUTER_LOGPROBS",
)


def summary(labels: Sequence[str], confidence: Sequence[float], truth: Sequence[str]) -> dict:
    right = [a == t for a, t in zip(labels, truth, strict=True)]
    return {
        "rows": len(right),
        "accuracy": round(float(np.mean(right)), 4) if right else None,
        "ece": round(expected_calibration_error(confidence, right), 4) if right else None,
    }


def model_root(tmp: Path, models: Path) -> Path:
    """A model root holding a link to the real TF-IDF model: profiles go in ``tmp``."""
    root = tmp / "models"
    root.mkdir()
    (root / "tfidf").symlink_to((models / "tfidf").resolve())
    return root


def weak_subsets(rows: Sequence[Row], tfidf_top: Sequence[float], counts: Counter) -> dict:
    """Masks of the rows where the local model is weak; ``counts``: rows per label in the
    whole held-out split (the labels' frequency)."""
    dates = sorted(r.paper.published or "" for r in rows)
    newest = dates[int(len(dates) * 0.9)]
    by_count = sorted(counts.values())
    rare_cut = by_count[len(by_count) // 4]
    return {
        "local_top1_below_0.5": [p < 0.5 for p in tfidf_top],
        "newest_tenth": [(r.paper.published or "") >= newest for r in rows],
        "rarest_quarter_of_labels": [counts[r.truth] <= rare_cut for r in rows],
    }


def scripted(
    args: argparse.Namespace, accuracy: float, logprobs: bool, papers: list, tmp: Path
) -> dict:
    labels = deployed_label_set(args.model_dir, ["tfidf"])
    held_out = test_ids(args.model_dir, ["tfidf"])["tfidf"]
    every = stratified_sample(papers, held_out, labels, len(held_out), args.seed)
    truths = {paper_key(r.paper.text): Truth(r.truth, tuple(sorted(r.listed))) for r in every}
    name = f"scripted-{round(accuracy * 100)}"
    endpoint = ScriptedModel(truths, labels.labels, accuracy, seed=args.seed, model=name)
    root = model_root(tmp, args.model_dir)
    with ChatServer(endpoint) as server:
        os.environ.update(
            LLM_ROUTER_API_KEY="bench",
            LLM_ROUTER_BASE_URL=server.url,
            LLM_ROUTER_MODEL=name,
            LLM_ROUTER_MODEL_DIR=str(root),
            LLM_ROUTER_FALLBACKS="tfidf",
            LLM_ROUTER_CACHE_DIR=str(tmp / "cache"),
            LLM_ROUTER_LOGPROBS="true" if logprobs else "false",
        )
        from eval.__main__ import main as eval_main

        walls = {}
        for strategy in ("llm", "cascade"):  # a profile for each strategy the bench runs
            os.environ["LLM_ROUTER_STRATEGY"] = strategy
            started = time.perf_counter()
            code = eval_main(
                ["--calibrate", "--n", str(args.calibrate_n), "--seed", str(args.seed), "--data",
                 str(args.data), "--rpm", "1000000", "--concurrency", "8", "--price-per-mtok",
                 "0", "--out", str(tmp / f"calibration-{strategy}")]
            )  # fmt: skip
            walls[strategy] = round(time.perf_counter() - started, 2)
            if code != 0:
                raise SystemExit(f"calibration failed with exit code {code}")
        os.environ.pop("LLM_ROUTER_STRATEGY")
        calibrated = {
            r.paper.id
            for r in stratified_sample(papers, held_out, labels, args.calibrate_n, args.seed)
        }
        pool = [r for r in every if r.paper.id not in calibrated]
        rows = random.Random(args.seed).sample(pool, min(args.eval_n, len(pool)))
        texts = [r.paper.text for r in rows]
        truth = [r.truth for r in rows]
        tfidf = TfidfClassifier.load(args.model_dir / "tfidf").classify_batch(texts)
        combined = _answers(Settings(), texts)
        uncombined = _answers(Settings(calibration=False), texts)
        cascade = _answers(Settings(strategy="cascade"), texts)
    llm = [c.llm_answer.label if c.llm_answer else c.label for c in uncombined]
    systems = {
        "llm_alone": (llm, [c.llm_answer.confidence or 0 for c in combined]),
        "tfidf_alone": ([c.label for c in tfidf], [c.confidence for c in tfidf]),
        "uncombined": ([c.label for c in uncombined], [c.confidence for c in uncombined]),
        "combined": ([c.label for c in combined], [c.confidence for c in combined]),
    }
    result: dict[str, Any] = {
        "endpoint_accuracy_set": accuracy,
        "calibrate_n": args.calibrate_n,
        "calibrate_wall_s": walls,
        "all": {k: summary(lab, conf, truth) for k, (lab, conf) in systems.items()},
        "followed": dict(Counter(c.followed for c in combined)),
        "cascade_profile_threshold": _threshold(root),
        "cascade": {
            **summary([c.label for c in cascade], [c.confidence for c in cascade], truth),
            "llm_calls_share": round(
                sum(c.decision != "local_confident" for c in cascade) / len(cascade), 4
            ),
        },
    }
    masks = weak_subsets(rows, [c.confidence for c in tfidf], Counter(r.truth for r in every))
    for subset, mask in masks.items():
        result[subset] = {
            k: summary(
                [x for x, m in zip(lab, mask, strict=True) if m],
                [x for x, m in zip(conf, mask, strict=True) if m],
                [x for x, m in zip(truth, mask, strict=True) if m],
            )
            for k, (lab, conf) in systems.items()
        }
    return result


def _threshold(root: Path) -> float | None:
    from llm_router.voter import read_profile

    for path in (root / "profiles").glob("*.json"):
        if read_profile(path).key.strategy == "cascade":
            return read_profile(path).cascade_threshold
    return None


def _answers(settings: Settings, texts: list[str]) -> list[Classification]:
    with Router.from_settings(settings) as router:
        results = router.classify_many(texts, concurrency=8, return_exceptions=True)
    bad = [r for r in results if not isinstance(r, Classification)]
    if bad:
        raise SystemExit(f"{len(bad)} rows failed, e.g. {bad[0]!r}")
    return results  # type: ignore[return-value]


def real_endpoint(args: argparse.Namespace, papers: list, tmp: Path) -> dict:
    labels = deployed_label_set(args.model_dir, ["tfidf"])
    held_out = test_ids(args.model_dir, ["tfidf"])["tfidf"]
    rows = stratified_sample(papers, held_out, labels, args.n, args.seed)
    root = model_root(tmp, args.model_dir)
    settings = Settings(
        api_key="local",
        base_url=args.endpoint,
        model=args.model,
        model_dir=root,
        fallbacks=("tfidf",),
        structured_output=args.structured_output,
        strategy=args.strategy,
        timeout_s=600,
        max_attempts=2,
        cache_dir=args.cache_dir or tmp / "cache",
    )
    chain = build_chain(settings, limiter=RateLimiter(None))
    _kind, model, _sha = local_model(chain)
    started = time.perf_counter()
    done = Counter()

    def progress(_outcome: Any) -> None:
        done["rows"] += 1
        if done["rows"] % 20 == 0:
            print(f"{done['rows']} rows, {time.perf_counter() - started:.0f} s", file=sys.stderr)

    observations, results = collect(chain, rows, model, 1, progress, threading.Event())
    seconds = (time.perf_counter() - started) / max(1, len(rows))
    out: dict[str, Any] = {
        "model": args.model,
        "strategy": args.strategy,
        "rows_asked": len(rows),
        "rows_answered": len(observations),
        "failed": dict(Counter(r.reason for r in results if r.label is None)),
        "with_logprobs": sum(o.logprob is not None for o in observations),
        "seconds_per_row": round(seconds, 2),
    }
    # The same out-of-fold scoring as the calibration's report, with and without log-probs.
    for use_logprob in (False, True):
        if use_logprob and not out["with_logprobs"]:
            continue
        scored, post, alone = out_of_fold(
            folds(observations, args.seed), len(labels.labels), use_logprob
        )
        measured = figures(scored, post, alone)
        measured["cascade"] = cascade_threshold(scored, post)
        out["logprobs" if use_logprob else "no_logprobs"] = measured
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accuracy", default="0.45,0.90")
    parser.add_argument(
        "--logprobs", default="on,off", help="ask for log-probabilities (on), or not (off)"
    )
    parser.add_argument("--calibrate-n", type=int, default=300)
    parser.add_argument("--eval-n", type=int, default=2000)
    parser.add_argument("--endpoint", help="a real endpoint instead of the scripted ones")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--structured-output", default="json_object")
    parser.add_argument(
        "--strategy", default="llm", help="how a real endpoint is asked (llm, shortlist)"
    )
    parser.add_argument("--n", type=int, default=240, help="rows for a real endpoint")
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--data", type=Path, default=ABSTRACTS)
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    saved = {k: os.environ.get(k) for k in ENV}
    papers = load_papers(str(args.data))
    results: dict[str, Any] = {}
    try:
        if args.endpoint:
            with tempfile.TemporaryDirectory() as tmp:
                results[args.model] = real_endpoint(args, papers, Path(tmp))
        else:
            for accuracy in (float(a) for a in args.accuracy.split(",")):
                for mode in args.logprobs.split(","):
                    tmp = Path(tempfile.mkdtemp())
                    try:
                        results[f"scripted_{accuracy:.2f}_logprobs_{mode}"] = scripted(
                            args, accuracy, mode == "on", papers, tmp
                        )
                    finally:
                        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    emit("voter", results)
    save(results, args.out)


if __name__ == "__main__":
    main()
