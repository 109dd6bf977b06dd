"""``python -m llm_router``: classify a corpus file, or serve the router over HTTP.

Exit codes: 0 done, 2 bad arguments, unusable input or settings, or a missing optional
extra (one line on stderr), 130 interrupted (every row already answered is kept).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from llm_router.errors import RouterError
from llm_router.records import DataError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see python -m llm_router --help)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> _Parser:
    p = _Parser(prog="python -m llm_router", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

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
    return p


def _classify(args: argparse.Namespace) -> int:
    from llm_router.corpus import classify_file

    for name in ("max_requests", "max_tokens", "chunk_size", "ray_workers", "workers"):
        value = getattr(args, name)
        floor = 0 if name in ("max_requests", "max_tokens") else 1
        if value is not None and value < floor:
            print(f"error: --{name.replace('_', '-')} is out of range: {value}", file=sys.stderr)
            return 2
    if args.max_cost_usd is not None and args.max_cost_usd < 0:
        print("error: --max-cost-usd must not be negative", file=sys.stderr)
        return 2
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
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        from llm_router.service import serve
    except ImportError as exc:
        print(
            f"error: serving needs the [serve] extra ({exc.name} is missing): "
            'pip install -e ".[serve]"',
            file=sys.stderr,
        )
        return 2
    serve(host=args.host, port=args.port, ui=not args.no_ui)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "httpcore", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return _classify(args) if args.command == "classify" else _serve(args)
    except (DataError, RouterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
