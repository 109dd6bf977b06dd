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

from eval.systems import RowResult
from fallback_models.scoring import (
    confused_pairs,
    expected_calibration_error,
    macro_weighted_f1,
    percentile,
    top_k_accuracy,
    wilson_interval,
)
from llm_router.labels import group_of

logger = logging.getLogger(__name__)


def system_figures(outcomes: Sequence[RowResult], spent: dict[str, Any]) -> dict[str, Any]:
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
    group_correct = sum(
        o.label is not None and _group(o.label) == _group(o.truth) for o in outcomes
    )
    with_listed = [o for o in outcomes if len(o.listed) > 0]
    listed_correct = sum(o.label in o.listed for o in with_listed)
    shortlisted = [o for o in outcomes if o.shortlist]
    confidence = [(o.confidence, o.label == o.truth) for o in answered if o.confidence is not None]
    figures: dict[str, Any] = {
        "rows": n,
        "answered": len(answered),
        "correct": correct,
        "accuracy": correct / n if n else None,
        "accuracy_ci95": [low, high],
        "group_accuracy": group_correct / n if n else None,
        "group_accuracy_ci95": list(wilson_interval(group_correct, n)),
        "listed_accuracy": listed_correct / len(with_listed) if with_listed else None,
        "listed_accuracy_ci95": list(wilson_interval(listed_correct, len(with_listed))),
        **llm_economics(outcomes),
        "shortlist_rows": len(shortlisted),
        "shortlist_recall": (
            sum(o.truth in o.shortlist for o in shortlisted if o.shortlist) / len(shortlisted)
            if shortlisted
            else None
        ),
        "decisions": dict(Counter(o.decision for o in outcomes if o.decision)),
        # The calibration error of ``confidence`` over the answered rows.
        "ece": (
            expected_calibration_error([c for c, _ in confidence], [r for _, r in confidence])
            if confidence
            else None
        ),
        "mean_confidence": (
            sum(c for c, _ in confidence) / len(confidence) if confidence else None
        ),
        "followed": dict(Counter(o.followed for o in outcomes if o.followed)),
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


def _group(label: str) -> str:
    return group_of(label) or "other"


def llm_economics(outcomes: Sequence[RowResult]) -> dict[str, Any]:
    """The share of rows that reached the LLM, and tokens and cost per row.

    Per-row figures come from the rows that were actually sent (their ``usage``) and are
    scaled to every row that reached the LLM, so an answer taken from the cache (free here)
    does not make a strategy look cheaper than it would be on new abstracts.
    """
    n = len(outcomes)
    reached = sum(o.reached_llm for o in outcomes)
    paid = [o for o in outcomes if o.requests > 0]
    share = reached / n if n else 0.0
    figures: dict[str, Any] = {
        "llm_share": share if n else None,
        "llm_rows_sent": len(paid),
        "requests_per_llm_row": None,
        "prompt_tokens_per_row": None,
        "completion_tokens_per_row": None,
        "cost_usd_per_1k_rows": None,
    }
    if paid:
        figures.update(
            requests_per_llm_row=sum(o.requests for o in paid) / len(paid),
            prompt_tokens_per_row=share * sum(o.prompt_tokens for o in paid) / len(paid),
            completion_tokens_per_row=share * sum(o.completion_tokens for o in paid) / len(paid),
            cost_usd_per_1k_rows=1000 * share * sum(o.cost_usd for o in paid) / len(paid),
        )
    elif reached == 0:  # nothing reached the LLM: it cost nothing, exactly
        figures.update(
            prompt_tokens_per_row=0.0, completion_tokens_per_row=0.0, cost_usd_per_1k_rows=0.0
        )
    return figures


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def table(report: dict[str, Any]) -> str:
    """The side-by-side terminal table (also the core of report.md)."""
    header = (
        "| system | rows | accuracy (95% CI) | ECE | group acc. | listed acc. | top-5 | macro-F1 "
        "| weighted-F1 | p50 ms | p95 ms | requests | tokens | cost $ | LLM share "
        "| prompt tok/row | compl. tok/row | $ per 1k rows | shortlist recall | cached "
        "| answered by / fell back because |"
    )
    columns = header.count("|") - 1
    lines = [header, "|" + "---|" * columns]
    for name, figures in report["systems"].items():
        if "unavailable" in figures:
            lines.append(
                f"| {name} | — | unavailable: {figures['unavailable']} |" + " |" * (columns - 3)
            )
            continue
        low, high = figures["accuracy_ci95"]
        detail = ", ".join(f"{k} {v}" for k, v in sorted(figures["sources"].items()))
        if figures["reasons"]:
            detail += "; " + ", ".join(f"{k} {v}" for k, v in sorted(figures["reasons"].items()))
        if figures.get("followed"):
            detail += "; followed: " + ", ".join(
                f"{k} {v}" for k, v in sorted(figures["followed"].items())
            )
        if figures.get("decisions"):
            detail += "; decided: " + ", ".join(
                f"{k} {v}" for k, v in sorted(figures["decisions"].items())
            )
        lines.append(
            f"| {name} | {figures['rows']} "
            f"| {_pct(figures['accuracy'])} ({_pct(low)}–{_pct(high)}) "
            f"| {_num(figures.get('ece'), 3)} "
            f"| {_pct(figures['group_accuracy'])} | {_pct(figures['listed_accuracy'])} "
            f"| {_pct(figures['top5'])} | {figures['macro_f1']:.3f} | {figures['weighted_f1']:.3f} "
            f"| {_ms(figures['latency_ms_p50'])} | {_ms(figures['latency_ms_p95'])} "
            f"| {figures['requests']} | {figures['tokens']} | {figures['cost_usd']:.4f} "
            f"| {_pct(figures['llm_share'])} | {_num(figures['prompt_tokens_per_row'])} "
            f"| {_num(figures['completion_tokens_per_row'])} "
            f"| {_num(figures['cost_usd_per_1k_rows'], 4)} | {_pct(figures['shortlist_recall'])} "
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
    out: Path, report: dict[str, Any], outcomes: dict[str, list[RowResult]]
) -> list[Path]:
    """Write report.json, report.md, predictions.csv and confusion.png under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    predictions = [
        {
            "system": name,
            **vars(o),
            "candidates": " ".join(o.candidates),
            "shortlist": " ".join(o.shortlist or []),
            "listed": sorted(o.listed),
        }
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
        "Accuracy counts unanswered rows as wrong; the interval is a 95% Wilson interval. "
        "Group accuracy compares arXiv groups (Computer Science, Physics, ...); listed "
        "accuracy counts an answer that is any of the paper's listed categories. LLM share: "
        "rows put to the LLM; tokens and cost per row are those of the rows sent, scaled by "
        "that share (a cache hit is not counted as free).",
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
            "decision",
            "shortlist",
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


def confusion_image(path: Path, name: str, outcomes: Sequence[RowResult]) -> Path | None:
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
