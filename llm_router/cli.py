"""``llm-router`` (also ``python -m llm_router``): one command for every surface.

```
llm-router classify INPUT -o OUTPUT   a resumable corpus job            (llm_router.corpus)
llm-router serve                      the HTTP service and its page      (llm_router.service)
llm-router eval --n 10                the side-by-side evaluation        (python -m eval)
llm-router train tfidf --data PATH    train a local model                (python -m fallback_models)
llm-router info [MODEL_DIR]           version, settings, installed models (or one manifest)
```
Exit codes: 0 done, 1 a corpus job in which no row could be answered (the rows are kept
with their errors and asked again by the next run), 2 bad arguments, unusable input or
settings, or a missing optional extra (one line on stderr), 130 interrupted (every row
already answered is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_router.console import Parser, fail, setup_logging
from llm_router.errors import RouterError
from llm_router.records import DataError

PROG = "llm-router"


def version() -> str:
    """The installed distribution's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("llm-router")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _parser() -> Parser:
    p = Parser(prog=PROG, description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    sub.add_parser(
        "eval",
        add_help=False,
        help="compare the router, the LLM and each local model (llm-router eval --help)",
    )
    sub.add_parser("train", add_help=False, help="train a local model (llm-router train --help)")

    c = sub.add_parser(
        "classify",
        help="classify every row of a corpus file (resumable)",
        description="Classify every row of INPUT into OUTPUT; re-run with the same OUTPUT to "
        "resume (ids already written are skipped, nothing is sent for them).",
    )
    c.add_argument("input", type=Path, help="INPUT: .jsonl, .jsonl.gz, .csv or .parquet")
    c.add_argument(
        "-o", "--output", type=Path, required=True, help="OUTPUT: .jsonl, .csv or .parquet"
    )
    c.add_argument("--text-field", default="abstract", help="text column (default abstract)")
    c.add_argument(
        "--title-field",
        default="title",
        help="title column, prefixed to the text when present (default title; '' for none)",
    )
    c.add_argument("--id-field", default="id", help="id column (default id)")
    c.add_argument(
        "--concurrency", type=int, default=8, help="rows in flight at the LLM (default 8)"
    )
    c.add_argument("--rpm", type=float, help="LLM requests per minute, for every worker together")
    c.add_argument("--max-requests", type=int, help="LLM HTTP attempts allowed in all")
    c.add_argument("--max-tokens", type=int, help="LLM tokens allowed in all")
    c.add_argument("--max-cost-usd", type=float, help="USD allowed in all")
    c.add_argument("--engine", choices=("local", "ray"), default="local")
    c.add_argument(
        "--workers",
        type=int,
        help="processes for the local models when no LLM key is set (default: one per CPU, "
        "at most 4; only for jobs of more than 4 chunks)",
    )
    c.add_argument(
        "--ray-address", help="a running Ray cluster (default: a local Ray, started on demand)"
    )
    c.add_argument(
        "--ray-workers", type=int, help="Ray actors that classify (default: one per CPU but one)"
    )
    c.add_argument(
        "--chunk-size", type=int, default=1024, help="rows per local-model batch (default 1024)"
    )
    c.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when it is a terminal)",
    )
    c.add_argument("-v", "--verbose", action="store_true", help="log fallbacks and retries")

    s = sub.add_parser("serve", help="serve the router over HTTP (FastAPI, the page at /ui)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--no-ui", action="store_true", help="do not mount the Gradio page at /ui")
    s.add_argument("-v", "--verbose", action="store_true")

    i = sub.add_parser(
        "info",
        help="version, settings and installed models; or one model directory's manifest",
    )
    i.add_argument("directory", type=Path, nargs="?", help="a model directory to describe")
    return p


def _classify(args: argparse.Namespace) -> int:
    from llm_router.corpus import classify_file

    for name in ("max_requests", "max_tokens", "chunk_size", "ray_workers", "workers"):
        value = getattr(args, name)
        floor = 0 if name in ("max_requests", "max_tokens") else 1
        if value is not None and value < floor:
            return fail(f"--{name.replace('_', '-')} is out of range: {value}")
    if args.max_cost_usd is not None and args.max_cost_usd < 0:
        return fail("--max-cost-usd must not be negative")
    note = _throughput_note()
    if note:
        print(note, file=sys.stderr)
    try:
        summary = classify_file(
            args.input,
            args.output,
            text_field=args.text_field,
            title_field=args.title_field or None,
            id_field=args.id_field,
            concurrency=args.concurrency,
            rpm=args.rpm,
            max_requests=args.max_requests,
            max_cost_usd=args.max_cost_usd,
            max_tokens=args.max_tokens,
            engine=args.engine,
            ray_address=args.ray_address,
            ray_workers=args.ray_workers,
            chunk_size=args.chunk_size,
            progress=args.progress,
            workers=args.workers,
        )
    except KeyboardInterrupt as interrupt:
        partial = getattr(interrupt, "summary", None)
        print("\ninterrupted: rows already answered are kept; re-run to resume", file=sys.stderr)
        if partial is not None:
            print(partial.line())
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)  # do not wait for LLM calls still in flight: they are re-asked later
    print(summary.line())
    unanswered = summary.unanswered()
    if unanswered is not None:  # rows are kept with their errors; the next run asks again
        return fail(unanswered, code=1)
    return 0


# Below this many texts per second a local model sets the pace of a corpus job: say so.
_SLOW_TEXTS_PER_S = 500.0


def _throughput_note() -> str | None:
    """One line when the first local model of the chain is slow (a BERT link), with the
    measured speed of each installed kind, so that a user can pick a faster chain."""
    from fallback_models.registry import MODELS
    from llm_router.chain import local_order
    from llm_router.settings import Settings

    settings = Settings()
    if settings.api_key is not None:
        return None
    order, _labels = local_order(settings)
    speeds = {kind: MODELS.texts_per_second(settings.model_dir, kind) for kind in MODELS.kinds}
    if not order or (speeds.get(order[0]) or float("inf")) >= _SLOW_TEXTS_PER_S:
        return None
    faster = [k for k, v in speeds.items() if v is not None and v >= _SLOW_TEXTS_PER_S]
    hint = (
        f"; LLM_ROUTER_FALLBACKS={faster[0]} answers about {speeds[faster[0]]:,.0f}/s"
        if faster
        else ""
    )
    return (
        f"note: local answers come from {order[0]} at about {speeds[order[0]]:,.0f} texts/s "
        f"(measured when it was trained){hint}"
    )


def _serve(args: argparse.Namespace) -> int:
    try:
        from llm_router.service.app import serve
    except ImportError as exc:
        return fail(
            f'serving needs the [serve] extra ({exc.name} is missing): pip install -e ".[serve]"'
        )
    serve(host=args.host, port=args.port, ui=not args.no_ui)
    return 0


def _info(args: argparse.Namespace) -> int:
    if args.directory is not None:
        from fallback_models.__main__ import describe

        return describe(args.directory)
    from llm_router.chain import local_order
    from llm_router.registry import local_models
    from llm_router.settings import Settings

    settings = Settings()
    order, labels = local_order(settings)
    models = local_models()
    installed: dict[str, Any] = {}
    for kind in models.trained if models is not None else ():
        manifest_path = settings.model_dir / kind / "manifest.json"
        if not manifest_path.is_file():
            installed[kind] = "not trained"
            continue
        try:
            metrics = json.loads(manifest_path.read_text(encoding="utf-8"))["metrics"]
            installed[kind] = {"top1": metrics["top1"], "test_rows": metrics["test_rows"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            installed[kind] = f"unreadable manifest: {exc}"
    print(
        json.dumps(
            {
                "version": version(),
                "endpoint": settings.endpoint,
                "model": settings.model,
                "api_key": "set" if settings.api_key is not None else "unset",
                "strategy": settings.strategy,
                "model_dir": str(settings.model_dir.resolve()),
                "local_models": installed,
                "chain": ["llm", *order],
                "labels": len(labels.labels),
                "calibration": _calibration(settings, order, models),
            },
            indent=2,
        )
    )
    return 0


def _calibration(settings: Any, order: tuple[str, ...], models: Any) -> str:
    """The calibration profile the router would apply to LLM answers, in one line."""
    if not settings.calibration:
        return "off (LLM_ROUTER_CALIBRATION=false)"
    from llm_router.chain import prompt_version
    from llm_router.voter import Calibration

    found = Calibration(
        settings.model_dir,
        model=settings.model,
        prompt_version=prompt_version(settings, settings.strategy),
        strategy=settings.strategy,
    )
    for kind in order:
        sha256 = models.sha256(settings.model_dir, kind) if models is not None else None
        if sha256 is None:
            continue
        profile = found.profile_for(kind, sha256)
        if profile is not None:
            return profile.describe()
        break
    return "none for this setup: LLM answers win with confidence 0.5 (python -m eval --calibrate)"


def _delegated() -> dict[str, Callable[[list[str]], int]]:
    """Subcommands whose parser lives with their package (imported only when run)."""

    def evaluate(argv: list[str]) -> int:
        from eval.__main__ import main as eval_main

        return eval_main(argv, prog=f"{PROG} eval")

    def train(argv: list[str]) -> int:
        from fallback_models.__main__ import main as train_main

        return train_main(["train", *argv], prog=f"{PROG}")

    return {"eval": evaluate, "train": train}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    delegated = _delegated()
    if argv and argv[0] in delegated:
        return delegated[argv[0]](argv[1:])
    args = _parser().parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    commands = {"classify": _classify, "serve": _serve, "info": _info}
    try:
        return commands[args.command](args)
    except (DataError, RouterError) as exc:
        return fail(exc)
