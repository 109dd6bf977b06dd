"""``python -m eval``: a budgeted, rate-limited, side-by-side evaluation on held-out rows.

Exit codes: 0 for a completed run (failed requests are findings, not errors), 2 for bad
arguments or unusable data/models (one line on stderr), 130 when interrupted (the partial
report is written first).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from eval.calibrate import CalibrationError, calibrate, collect, local_model, report_table
from eval.pricing import estimate, fetch_price, parse_price
from eval.report import system_figures, table, write_report
from eval.sampling import stratified_sample
from eval.systems import (
    ALL_SYSTEMS,
    DEFAULT_SYSTEMS,
    LLM_STRATEGIES,
    RowResult,
    System,
    build_systems,
    run_concurrent,
    run_local,
)
from fallback_models.artifacts import read_manifest, test_ids
from fallback_models.data import HF_DATASET, DataError, is_local, load_papers
from fallback_models.registry import MODELS
from llm_router.chain import Chain, build_chain, local_order
from llm_router.console import Parser, fail, setup_logging
from llm_router.errors import RouterError
from llm_router.llm.budget import Budget, Price
from llm_router.llm.ratelimit import RateLimiter
from llm_router.llm.redact import redact_url
from llm_router.settings import Settings
from llm_router.voter import write_profile

logger = logging.getLogger("eval")
RUN_ORDER = (*LLM_STRATEGIES, "router", *MODELS.kinds)


class UsageError(Exception):
    """A user error: printed as one line, exit code 2."""


def _parser(prog: str) -> Parser:
    p = Parser(
        prog=prog,
        description="Compare the router, the LLM alone and each "
        "local model on held-out arXiv abstracts, within a budget.",
    )
    p.add_argument("--n", type=int, default=10, help="rows to evaluate (default 10)")
    p.add_argument(
        "--data",
        help="local .jsonl[.gz]/.parquet/.csv or hub id (default: the data "
        f"the models were trained on, else {HF_DATASET})",
    )
    p.add_argument(
        "--systems",
        default=",".join(DEFAULT_SYSTEMS),
        help=f"comma-separated subset of {','.join(ALL_SYSTEMS)} "
        f"(default: {','.join(DEFAULT_SYSTEMS)}); llm, shortlist and cascade are the LLM "
        "used each way with no fallback, router is the configured chain",
    )
    p.add_argument(
        "--max-requests",
        type=int,
        help="HTTP attempts allowed in all (default 3×n per system that calls the LLM)",
    )
    p.add_argument("--max-tokens", type=int, help="prompt+completion tokens allowed in all")
    p.add_argument("--max-cost-usd", type=float, default=1.0, help="USD allowed in all (default 1)")
    p.add_argument(
        "--price-per-mtok",
        metavar="PROMPT[,COMPLETION]",
        help="USD per million prompt (and completion) tokens, for --estimate and the cost "
        "budget; 0 for a free local server (default: the endpoint's model list)",
    )
    p.add_argument(
        "--rpm",
        type=float,
        default=20.0,
        help="requests per minute, evenly spaced (default 20: OpenRouter's free tier)",
    )
    p.add_argument("--concurrency", type=int, default=4, help="rows in flight (default 4)")
    p.add_argument("--seed", type=int, default=42, help="sampling seed (default 42)")
    p.add_argument("--out", type=Path, help="report folder (default runs/<timestamp>)")
    p.add_argument(
        "--estimate",
        action="store_true",
        help="print projected requests, tokens and cost, then exit; sends nothing",
    )
    p.add_argument(
        "--train-missing",
        action="store_true",
        help="train the TF-IDF model first when no model is trained yet",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="measure the configured endpoint on --n labelled rows, fit how its answers are "
        "combined with the local model's, and write a calibration profile under "
        "LLM_ROUTER_MODEL_DIR/profiles (--systems is ignored)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log retries and fallbacks")
    return p


def _check(args: argparse.Namespace) -> list[str]:
    if args.n < 1:
        raise UsageError(f"--n must be at least 1, got {args.n}")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(ALL_SYSTEMS))
    if unknown or not systems:
        raise UsageError(
            f"unknown system(s) {', '.join(unknown) or '(none)'}; choose from "
            f"{','.join(ALL_SYSTEMS)}"
        )
    for name in ("max_requests", "max_tokens", "concurrency"):
        value = getattr(args, name)
        if value is not None and value < (0 if name != "concurrency" else 1):
            floor = "below 1" if name == "concurrency" else "negative"
            raise UsageError(f"--{name.replace('_', '-')} must not be {floor}")
    if args.rpm <= 0:
        raise UsageError("--rpm must be positive")
    if args.max_cost_usd is not None and args.max_cost_usd < 0:
        raise UsageError("--max-cost-usd must not be negative")
    if args.price_per_mtok is not None:
        try:
            args.price_per_mtok = parse_price(args.price_per_mtok)
        except ValueError as exc:
            raise UsageError(f"--price-per-mtok: {exc}") from None
    return list(dict.fromkeys(systems))


def _data_source(args: argparse.Namespace, settings: Settings) -> str:
    if args.data:
        return str(args.data)
    for kind in MODELS.trained:
        try:
            source = read_manifest(settings.model_dir / kind, kind)["data"]["source"]
        except (RouterError, KeyError, TypeError):
            continue
        if not is_local(source) or Path(source).is_file():
            return str(source)
    return HF_DATASET


def _held_out_ids(args: argparse.Namespace, settings: Settings) -> set[str]:
    found = test_ids(settings.model_dir, MODELS.trained)
    if not found and args.train_missing:
        from fallback_models.train import prepare_dataset, train_tfidf

        source = args.data or HF_DATASET
        print(
            f"no trained model under {settings.model_dir}: training tfidf on {source}",
            file=sys.stderr,
        )
        train_tfidf(prepare_dataset(source), settings.model_dir / "tfidf")
        found = test_ids(settings.model_dir, MODELS.trained)
    if not found:
        raise UsageError(
            f"no trained model under {settings.model_dir}: train one first with "
            "'python -m fallback_models train tfidf --data PATH', or pass --train-missing"
        )
    # Rows that no local model was trained on.
    return set.intersection(*found.values())


def _settings_summary(settings: Settings) -> dict[str, Any]:
    return {
        "base_url": redact_url(settings.endpoint),
        "model": settings.model,
        "prompt": settings.prompt,
        "structured_output": settings.structured_output,
        "api_key": "set" if settings.api_key is not None else "unset",
        "cache": settings.cache,
        "model_dir": str(settings.model_dir),
        "fallbacks": list(settings.fallbacks) if settings.fallbacks is not None else "auto",
        "strategy": settings.strategy,
        "shortlist_k": settings.shortlist_k,
        "cascade_threshold": settings.cascade_threshold,
    }


def run(args: argparse.Namespace) -> int:
    systems_wanted = _check(args)
    settings = Settings()
    held_out = _held_out_ids(args, settings)
    source = _data_source(args, settings)
    _order, labels = local_order(settings)  # the label space the systems answer in
    papers = load_papers(source)
    rows = stratified_sample(papers, held_out, labels, args.n, args.seed)
    if not rows:
        raise UsageError(
            f"none of the models' held-out rows are in {source}: pass the data "
            "they were trained on with --data"
        )
    if len(rows) < args.n:
        print(f"note: only {len(rows)} held-out rows available", file=sys.stderr)

    price: Price | None = args.price_per_mtok
    if (
        price is None
        and settings.api_key is not None
        and (args.estimate or args.max_cost_usd is not None)
    ):
        price = fetch_price(settings)
        if price is None and not args.estimate:
            print(
                f"note: no price known for {settings.model}: under --max-cost-usd requests go "
                "one at a time until the endpoint reports a cost (give --price-per-mtok; 0 "
                "for a free local server)",
                file=sys.stderr,
            )
    if args.calibrate and settings.api_key is None:
        raise UsageError(
            "--calibrate measures the endpoint: set OPENROUTER_API_KEY or LLM_ROUTER_API_KEY"
        )
    llm_systems = (
        sum(s in ("router", *LLM_STRATEGIES) for s in systems_wanted) if settings.api_key else 0
    )
    if args.calibrate:
        llm_systems = 1
    if args.estimate:
        distinct = llm_systems
        if (
            not args.calibrate
            and settings.cache
            and {"router", settings.strategy} <= set(systems_wanted)
            and distinct
        ):
            distinct -= 1  # the router repeats its strategy's questions: cache hits
        projected = estimate([r.paper.text for r in rows], settings, labels, distinct, price)
        print(f"estimate for {projected['rows']} rows (nothing sent):")
        for key, value in projected.items():
            print(f"  {key}: {value}")
        return 0

    budget = Budget(
        max_requests=args.max_requests
        if args.max_requests is not None
        else 3 * len(rows) * max(1, llm_systems),
        max_tokens=args.max_tokens,
        max_cost_usd=args.max_cost_usd,
        price=price,
    )
    limiter = RateLimiter(args.rpm, max_pause_s=settings.retry_after_max_s)
    if args.calibrate:
        return _calibrate(args, settings, rows, source, len(labels.labels), budget, limiter)
    systems, chain = build_systems(systems_wanted, settings, budget, limiter)
    # The LLM alone first: the router then finds its answers in the cache, paying once.
    order = sorted(systems, key=lambda s: RUN_ORDER.index(s.name))
    outcomes: dict[str, list[RowResult]] = {}
    spent: dict[str, dict[str, Any]] = {}
    status = "completed"
    stop = threading.Event()
    started = time.perf_counter()
    try:
        for system in order:
            if system.unavailable:
                print(f"{system.name}: unavailable ({system.unavailable})", file=sys.stderr)
                continue
            before = budget.snapshot()
            try:
                outcomes[system.name] = _run_one(system, rows, args.concurrency, stop, budget)
            finally:  # an interrupted system still reports what it spent
                spent[system.name] = _spent(before, budget.snapshot())
            if stop.is_set():
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        status = "interrupted"
        print(
            "\ninterrupted: writing the partial report (a re-run resumes from the cache)",
            file=sys.stderr,
        )
    report = {
        "status": status,
        "data": source,
        "rows": len(rows),
        "seed": args.seed,
        "wall_s": round(time.perf_counter() - started, 2),
        "settings": _settings_summary(settings),
        "budget": budget.snapshot(),
        "rpm": args.rpm,
        "concurrency": args.concurrency,
        "llm_link": _llm_link_state(chain),
        "systems": {},
    }
    for system in systems:
        if system.unavailable:
            report["systems"][system.name] = {"unavailable": system.unavailable}
        elif system.name in outcomes:
            report["systems"][system.name] = system_figures(
                outcomes[system.name],
                spent[system.name],
            )
    out = args.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    written = write_report(out, report, outcomes)
    print(table(report))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0 if status == "completed" else 130


def _calibrate(
    args: argparse.Namespace,
    settings: Settings,
    rows: list[Any],
    source: str,
    n_labels: int,
    budget: Budget,
    limiter: RateLimiter,
) -> int:
    """``--calibrate``: ask, fit, write the profile and the report; 130 when interrupted."""
    chain = build_chain(settings, budget=budget, limiter=limiter)
    try:
        kind, model, sha256 = local_model(chain)
    except CalibrationError as exc:
        raise UsageError(str(exc)) from None
    stop = threading.Event()
    started = time.perf_counter()
    with tqdm(total=len(rows), desc=f"calibrate {settings.model}", unit="row") as bar:
        done = _progress(bar, budget)
        observations, results = collect(chain, rows, model, args.concurrency, done, stop)
    failed = Counter(r.reason for r in results if r.label is None)
    if stop.is_set():
        print(
            "\ninterrupted: no profile written (a re-run resumes from the cache)", file=sys.stderr
        )
        return 130
    if failed:
        print(
            f"note: {sum(failed.values())} row(s) not answered by the LLM ("
            + ", ".join(f"{r}: {n}" for r, n in failed.most_common())
            + "); fitted without them",
            file=sys.stderr,
        )
    try:
        profile = calibrate(
            observations,
            settings=settings,
            local_kind=kind,
            local_sha256=sha256,
            n_labels=n_labels,
            seed=args.seed,
            data=source,
            failed=sum(failed.values()),
        )
    except CalibrationError as exc:
        raise UsageError(str(exc)) from None
    path = write_profile(settings.model_dir, profile)
    out = args.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    report = {
        **profile.model_dump(mode="json"),
        "profile": str(path),
        "wall_s": round(time.perf_counter() - started, 2),
        "budget": budget.snapshot(),
        "llm_link": _llm_link_state(chain),
    }
    (out / "calibration.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(report_table(profile))
    print(f"wrote {path} and {out / 'calibration.json'}")
    return 0


def _llm_link_state(chain: Chain) -> dict[str, Any]:
    """What the shared LLM link went through: circuit-breaker trips (and the failure that
    caused them) and disk-cache writes that were skipped."""
    state: dict[str, Any] = {}
    cache = getattr(chain.llm, "cache", None)
    if cache is not None:
        state["cache"] = dict(cache.stats)
    llm = getattr(chain.llm, "inner", chain.llm)
    breaker = getattr(llm, "breaker", None)
    if breaker is not None:
        state["breaker_trips"] = breaker.trips
        state["breaker_cause"] = breaker.cause
    return state


def _spent(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {
        "requests": int(after["requests"]) - int(before["requests"]),
        "tokens": int(after["tokens"]) - int(before["tokens"]),
        "cost_usd": round(float(after["cost_usd"]) - float(before["cost_usd"]), 6),
    }


def _run_one(
    system: System, rows: list[Any], concurrency: int, stop: threading.Event, budget: Budget
) -> list[RowResult]:
    if not system.uses_llm:
        with tqdm(total=len(rows), desc=system.name, unit="row", leave=False) as bar:
            result = run_local(system, rows)
            bar.update(len(rows))
        return result
    with tqdm(total=len(rows), desc=system.name, unit="row") as bar:
        return run_concurrent(system, rows, concurrency, _progress(bar, budget), stop)


def _progress(bar: Any, budget: Budget) -> Callable[[RowResult], None]:
    """A row's callback: advance ``bar``, show the LLM's accuracy so far and the spend."""
    counts = {"right": 0, "seen": 0}

    def done(outcome: RowResult) -> None:
        counts["right"] += outcome.label == outcome.truth
        counts["seen"] += 1
        snap = budget.snapshot()
        bar.update(1)
        bar.set_postfix(
            acc=f"{counts['right'] / counts['seen']:.0%}",
            req=snap["requests"],
            usd=f"{snap['spent_usd']:.4f}",
        )

    return done


def main(argv: list[str] | None = None, *, prog: str = "python -m eval") -> int:
    args = _parser(prog).parse_args(argv)
    setup_logging(args.verbose)
    try:
        return run(args)
    except (UsageError, DataError, RouterError) as exc:
        return fail(exc)


if __name__ == "__main__":
    sys.exit(main())
