"""Helpers shared by the benchmark scripts: real abstracts and a results printer."""

from __future__ import annotations

import gzip
import json
import platform
import statistics
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "arxiv"
ABSTRACTS = SHARED / "arxiv_abstracts.jsonl.gz"


def real_abstracts(n: int, offset: int = 0) -> list[str]:
    """``n`` distinct real abstracts from the shared data set (spread over the file)."""
    with gzip.open(ABSTRACTS, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line)["abstract"] for line in handle]
    step = max(1, len(rows) // (n + offset))
    picked = rows[offset::step][:n]
    return [f"{text} [{i}]" for i, text in enumerate(picked)]  # distinct even if repeated


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def machine() -> dict[str, Any]:
    import os

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def emit(name: str, results: dict[str, Any]) -> None:
    print(json.dumps({"bench": name, **results, "machine": machine()}, indent=2))


def save(results: dict[str, Any], path: Path | None) -> None:
    """Write ``results`` as JSON to ``path`` (the scripts' ``--out``), when given."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
