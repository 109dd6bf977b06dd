"""What a corpus job did: the summary it returns, and the counts its workers add to."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from pydantic import BaseModel, Field

from llm_router.errors import reason_of, spent_by
from llm_router.schemas import Classification

# Failures no later run changes: an invalid text, and rows that were never written (a bad
# line, a missing or repeated id).
_NOT_RETRIED = frozenset({"invalid_input", "bad_line", "missing_id", "duplicate_id"})


class CorpusSummary(BaseModel):
    """What one run of :func:`classify_file` did (this run only, not earlier ones)."""

    read: int = 0  # rows read from the input
    classified: int = 0  # rows written with a label
    skipped: int = 0  # ids already in the output: nothing sent
    failed: int = 0  # rows written with an error, plus duplicate and missing ids
    failed_by_reason: dict[str, int] = Field(default_factory=dict)
    by_source: dict[str, int] = Field(default_factory=dict)
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0
    engine: str = "local"
    output: str = ""
    interrupted: bool = False

    def retryable(self) -> dict[str, int]:
        """Failed rows written to OUTPUT that the next run asks again, by reason."""
        return {k: v for k, v in self.failed_by_reason.items() if k not in _NOT_RETRIED}

    def unanswered(self) -> str | None:
        """Why no row at all could be answered (the commonest reason), when that is so."""
        if self.classified or self.skipped or self.interrupted or not self.failed:
            return None
        reason, count = max(self.failed_by_reason.items(), key=lambda item: item[1])
        return f"no row could be answered: {reason} ({count} of {self.read} rows)"

    def line(self) -> str:
        """The summary as ``key=value`` pairs on one line (the CLI's last stdout line)."""
        pairs: list[tuple[str, object]] = [
            ("read", self.read),
            ("classified", self.classified),
            ("skipped", self.skipped),
            ("failed", self.failed),
            ("requests", self.requests),
            ("prompt_tokens", self.prompt_tokens),
            ("completion_tokens", self.completion_tokens),
            ("cost_usd", f"{self.cost_usd:.6f}"),
            ("wall_s", f"{self.wall_s:.2f}"),
        ]
        pairs += [(f"source_{k}", v) for k, v in sorted(self.by_source.items())]
        pairs += [(f"failed_{k}", v) for k, v in sorted(self.failed_by_reason.items())]
        if self.interrupted:
            pairs.append(("interrupted", "true"))
        return " ".join(f"{k}={v}" for k, v in pairs)


class Tally:
    """Counts for the summary, and the progress bar's numbers, shared across threads."""

    def __init__(self) -> None:
        self.summary = CorpusSummary()
        self.sources: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self._lock = threading.Lock()

    def fail(self, reason: str) -> None:
        with self._lock:
            self.failures[reason] += 1

    def add(self, result: Classification | Exception) -> None:
        with self._lock:
            s = self.summary
            usage = result.usage if isinstance(result, Classification) else spent_by(result)
            if usage is not None:
                s.requests += usage.requests
                s.prompt_tokens += usage.prompt_tokens
                s.completion_tokens += usage.completion_tokens
                s.cost_usd += usage.cost_usd or 0.0
            if isinstance(result, Classification):
                s.classified += 1
                self.sources[result.source] += 1
            else:
                self.failures[reason_of(result)] += 1

    def add_row(self, row: dict[str, Any], requests: int = 0) -> None:
        """Count an output row (from a worker process or a Ray actor)."""
        with self._lock:
            s = self.summary
            s.requests += requests
            s.prompt_tokens += row["prompt_tokens"] or 0
            s.completion_tokens += row["completion_tokens"] or 0
            s.cost_usd += row["cost_usd"] or 0.0
            if row["error"]:
                self.failures[row["error"].split(":", 1)[0]] += 1
            else:
                s.classified += 1
                self.sources[row["source"]] += 1

    def finish(self) -> CorpusSummary:
        s = self.summary
        s.by_source = dict(self.sources)
        s.failed_by_reason = dict(self.failures)
        s.failed = sum(self.failures.values())
        return s
