"""What every command-line entry point shares: one-line usage errors and logging set-up.

``llm-router`` (:mod:`llm_router.cli`), ``python -m fallback_models`` and ``python -m eval``
all build their parsers from :class:`Parser` and call :func:`setup_logging` once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, NoReturn

# Loggers of the HTTP stack: their per-request INFO lines drown ours under --verbose.
_NOISY = ("httpx", "httpcore", "openai")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (then exit code 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def setup_logging(verbose: bool = False) -> None:
    """WARNING and above on stderr (INFO with ``verbose``); the HTTP stack stays quiet."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: object, code: int = 2) -> int:
    """Print ``error: message`` on stderr; returns ``code`` (2: a usage or input error) for
    the caller to return."""
    print(f"error: {message}", file=sys.stderr)
    return code
