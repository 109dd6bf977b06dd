"""Per-system figures, the terminal table, and report.json / report.md / predictions.csv /
confusion.png."""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.metrics import (
    confused_pairs,
    macro_weighted_f1,
    percentile,
    top_k_accuracy,
    wilson_interval,
)
from eval.systems import Outcome

logger = logging.getLogger(__name__)


def system_figures(outcomes: Sequence[Outcome], spent: dict[str, Any]) -> dict[str, Any]:
    """Every figure for one system; rows it could not answer count as wrong."""
    n = len(outcomes)
    truth = [o.truth for o in outcomes]
    predicted = [o.label or "<none>" for o in outcomes]
    correct = sum(t == p for t, p in zip(truth, predicted, strict=True))
    low, high = wilson_interval(correct, n)
    answered = [o for o in outcomes if o.label is not None]
    has_top5 = bool(answered) and all(len(o.candidates) >= 5 for o in answered)
    macro, weighted = macro_weighted_f1(truth, predicted)
    latencies = [o.latency_ms for o in outcomes]
    figures: dict[str, Any] = {
        "rows": n,
        "answered": len(answered),
        "correct": correct,
        "accuracy": correct / n if n else None,
        "accuracy_ci95": [low, high],
        "top5": top_k_accuracy(truth, [o.candidates for o in outcomes]) if has_top5 else None,
        "macro_f1": macro,
        "weighted_f1": weighted,
        "latency_ms_p50": percentile(latencies, 50),
        "latency_ms_p95": percentile(latencies, 95),
        **spent,
        "cache_hits": sum(o.cached for o in outcomes),
        "sources": dict(Counter(o.source or "none" for o in outcomes)),
        "reasons": dict(Counter(o.reason for o in outcomes if o.reason)),
        "confused_pairs": [
            {"true": t, "predicted": p, "count": c}
            for t, p, c in confused_pairs(truth, predicted, 5)
        ],
    }
    return figures


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def table(report: dict[str, Any]) -> str:
    """The side-by-side terminal table (also the core of report.md)."""
    header = (
        "| system | rows | accuracy (95% CI) | top-5 | macro-F1 | weighted-F1 | p50 ms | p95 ms "
        "| requests | tokens | cost $ | cached | answered by / fell back because |"
    )
    lines = [header, "|" + "---|" * 13]
    for name, figures in report["systems"].items():
        if "unavailable" in figures:
            lines.append(f"| {name} | — | unavailable: {figures['unavailable']} |" + " |" * 10)
            continue
        low, high = figures["accuracy_ci95"]
        detail = ", ".join(f"{k} {v}" for k, v in sorted(figures["sources"].items()))
        if figures["reasons"]:
            detail += "; " + ", ".join(f"{k} {v}" for k, v in sorted(figures["reasons"].items()))
        lines.append(
            f"| {name} | {figures['rows']} "
            f"| {_pct(figures['accuracy'])} ({_pct(low)}–{_pct(high)}) "
            f"| {_pct(figures['top5'])} | {figures['macro_f1']:.3f} | {figures['weighted_f1']:.3f} "
            f"| {_ms(figures['latency_ms_p50'])} | {_ms(figures['latency_ms_p95'])} "
            f"| {figures['requests']} | {figures['tokens']} | {figures['cost_usd']:.4f} "
            f"| {figures['cache_hits']} | {detail} |"
        )
    notes = link_notes(report.get("llm_link", {}))
    return "\n".join(lines + ([""] + notes if notes else []))


def link_notes(link: dict[str, Any]) -> list[str]:
    """Lines about the shared LLM link: why it was switched off, cache writes skipped."""
    notes = []
    if link.get("breaker_trips"):
        notes.append(
            f"LLM switched off {link['breaker_trips']}× by the circuit breaker, last after "
            f"{link['breaker_cause']} (rows after that say circuit_open)"
        )
    bypassed = link.get("cache", {}).get("bypassed_writes", 0)
    if bypassed:
        notes.append(f"{bypassed} answer(s) not cached: the disk cache was unavailable")
    return notes


def write_report(
    out: Path, report: dict[str, Any], outcomes: dict[str, list[Outcome]]
) -> list[Path]:
    """Write report.json, report.md, predictions.csv and confusion.png under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    predictions = [
        {"system": name, **vars(o), "candidates": " ".join(o.candidates)}
        for name, rows in outcomes.items()
        for o in rows
    ]
    payload = {**report, "predictions": predictions}
    (out / "report.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    written.append(out / "report.json")

    md = [
        "# llm-router evaluation",
        "",
        f"- status: {report['status']}",
        f"- data: `{report['data']}`, {report['rows']} held-out rows (seed {report['seed']})",
        f"- model: `{report['settings']['model']}` at `{report['settings']['base_url']}`, "
        f"prompt `{report['settings']['prompt']}`",
        f"- budget: {json.dumps(report['budget'])}",
        "",
        table(report),
        "",
        "Accuracy counts unanswered rows as wrong; the interval is a 95% Wilson interval.",
    ]
    (out / "report.md").write_text("\n".join(md) + "\n")
    written.append(out / "report.md")

    with (out / "predictions.csv").open("w", newline="", encoding="utf-8") as handle:
        fields = [
            "system",
            "row_id",
            "truth",
            "label",
            "source",
            "cached",
            "reason",
            "latency_ms",
            "candidates",
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "cost_usd",
        ]
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(predictions)
    written.append(out / "predictions.csv")

    answered = {k: sum(o.label is not None for o in v) for k, v in outcomes.items() if v}
    if answered:
        largest = max(answered, key=lambda k: answered[k])
        path = confusion_image(out / "confusion.png", largest, outcomes[largest])
        if path is not None:
            written.append(path)
    return written


def confusion_image(path: Path, name: str, outcomes: Sequence[Outcome]) -> Path | None:
    """A confusion matrix over the labels that occur (truth or prediction), as PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        logger.warning("matplotlib is not installed: no confusion.png")
        return None
    labels = sorted({o.truth for o in outcomes} | {o.label or "<none>" for o in outcomes})
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for o in outcomes:
        matrix[index[o.truth], index[o.label or "<none>"]] += 1
    size = max(4.0, min(30.0, 0.22 * len(labels) + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(np.log1p(matrix), cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{name}: {len(outcomes)} rows (log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
