"""``python -m eval --calibrate``: measure the endpoint, fit the voter, write its profile.

Each labelled row is put to the LLM the way the configured strategy asks (the full list, or
the local model's top K), and to the first local model of the chain (its top 20). The figures
of the report are measured out of fold: the rows are dealt into three folds by the seed, and
each fold is scored by a combination (:class:`~llm_router.voter.VoterParams`) fitted on the
other two, so every row is held back from the fit that scores it. The cascade threshold is
chosen on those scores; the profile's numbers are then fitted on every row. The profile is
written under ``LLM_ROUTER_MODEL_DIR/profiles/``.
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from eval.sampling import Row
from eval.systems import RowResult, System, run_concurrent
from fallback_models.scoring import expected_calibration_error
from llm_router.chain import Chain, prompt_version
from llm_router.errors import ClassifierError
from llm_router.labels import archive_of
from llm_router.schemas import DEFAULT_LLM_CONFIDENCE, Candidate, Classification
from llm_router.settings import Settings
from llm_router.strategy import StrategyName
from llm_router.voter import LOCAL_TOP_K, Profile, ProfileKey, VoterParams, followed

logger = logging.getLogger(__name__)

FOLDS = 3  # the report's rows are scored out of fold
ARCHIVE_RIDGE = 2.0  # L2 penalty on the per-archive offsets (few rows: they stay near 0)
MIN_LOGPROB_SHARE = 0.8  # log-probabilities are used when at least this share of answers has one
CASCADE_TOLERANCE = 0.005  # the cascade may give up this much accuracy to save LLM calls


class CalibrationError(Exception):
    """The calibration cannot run or fit (one line for the user)."""


@dataclass(frozen=True)
class Observation:
    """One labelled row: what the local model and the LLM said."""

    row_id: str
    truth: str
    local: tuple[Candidate, ...]
    llm_label: str
    logprob: float | None


class _Asker:
    """Puts each text to the LLM link as the strategy asks, and keeps the answer."""

    name = "llm"

    def __init__(self, chain: Chain, strategy: StrategyName, local: dict[str, Classification]):
        self.chain = chain
        self.strategy = strategy
        self.local = local
        self.answers: dict[str, Classification] = {}
        self._lock = threading.Lock()

    def classify(self, text: str) -> Classification:
        llm: Any = self.chain.llm
        if self.strategy == "llm":
            result: Classification = llm.classify(text)
        else:
            shortlist = [c.label for c in self.local[text].candidates[: self.chain.shortlist_k]]
            result = llm.classify(text, shortlist=shortlist)
        with self._lock:
            self.answers[text] = result
        return result


def local_model(chain: Chain) -> tuple[str, Any, str]:
    """The first local model of the chain that loads: its kind, the model and its sha256."""
    reasons = []
    for kind in chain.order:
        lazy = chain.local[kind]
        try:
            model = lazy.get()
        except ClassifierError as exc:
            reasons.append(f"{kind}: {exc.reason}")
            continue
        if lazy.model_sha256 is None:
            reasons.append(f"{kind}: no manifest")
            continue
        return kind, model, lazy.model_sha256
    raise CalibrationError(
        "calibration combines the LLM with a local model, and none loads ("
        + (", ".join(reasons) or "none installed")
        + "): train one with 'python -m fallback_models train tfidf --data PATH'"
    )


def collect(
    chain: Chain,
    rows: Sequence[Row],
    model: Any,
    concurrency: int,
    on_done: Any,
    stop: threading.Event,
) -> tuple[list[Observation], list[RowResult]]:
    """Ask the local model (batched) and the LLM (``concurrency`` at a time) about ``rows``."""
    texts = [r.paper.text for r in rows]
    ranked = model.classify_batch(texts, top_k=LOCAL_TOP_K)
    local = dict(zip(texts, ranked, strict=True))
    asker = _Asker(chain, chain.strategy, local)
    results = run_concurrent(
        System("calibrate", asker, uses_llm=True), rows, concurrency, on_done, stop
    )
    observations = []
    for row in rows:
        answer = asker.answers.get(row.paper.text)
        if answer is None:
            continue
        vote = answer.llm_answer
        observations.append(
            Observation(
                row_id=row.paper.id,
                truth=row.truth,
                local=tuple(local[row.paper.text].candidates),
                llm_label=vote.label if vote is not None else answer.label,
                logprob=vote.logprob if vote is not None else None,
            )
        )
    return observations, results


def folds(observations: Sequence[Observation], seed: int) -> list[list[Observation]]:
    """The rows dealt into :data:`FOLDS` folds after a seeded shuffle (fewer with few rows)."""
    order = list(observations)
    random.Random(seed).shuffle(order)
    k = max(1, min(FOLDS, len(order) // 2))
    return [order[i::k] for i in range(k)]


# -- the fit ---------------------------------------------------------------------------------
@dataclass
class _Design:
    """The fit rows as arrays: slot j of row i is a candidate label (the LLM's one last)."""

    logp: np.ndarray  # (rows, slots) log local probability, -inf for an empty slot
    is_llm: np.ndarray  # (rows, slots) 1 where the slot is the LLM's label
    truth: np.ndarray  # (rows,) slot of the true label, -1 when it is in the rest
    rest_logp: np.ndarray  # (rows,) log probability of each label outside the slots
    rest_count: np.ndarray  # (rows,) how many labels are outside the slots
    top: np.ndarray  # (rows,) local top-1 probability
    logprob: np.ndarray  # (rows,) the LLM label's log-probability (the mean where missing)
    archive: np.ndarray  # (rows,) index of the LLM label's archive in ``archives``
    archives: list[str]


def _design(observations: Sequence[Observation], n_labels: int, mean_logprob: float) -> _Design:
    slots = LOCAL_TOP_K + 1
    n = len(observations)
    logp = np.full((n, slots), -np.inf)
    is_llm = np.zeros((n, slots))
    truth = np.full(n, -1)
    rest_logp = np.zeros(n)
    rest_count = np.zeros(n)
    top = np.zeros(n)
    logprob = np.zeros(n)
    archives = sorted({archive_of(o.llm_label) for o in observations})
    archive = np.array([archives.index(archive_of(o.llm_label)) for o in observations])
    for i, o in enumerate(observations):
        probs = {c.label: max(1e-9, c.score) for c in o.local[:LOCAL_TOP_K]}
        listed = sum(probs.values())
        rest_each = max(1e-9, (1.0 - min(listed, 1.0)) / max(1, n_labels - len(probs)))
        if o.llm_label not in probs:
            probs[o.llm_label] = rest_each
        labels = list(probs)
        logp[i, : len(labels)] = np.log([probs[label] for label in labels])
        is_llm[i, labels.index(o.llm_label)] = 1.0
        truth[i] = labels.index(o.truth) if o.truth in probs else -1
        rest_logp[i] = math.log(rest_each)
        rest_count[i] = max(0, n_labels - len(labels))
        top[i] = max((c.score for c in o.local), default=0.0)
        logprob[i] = mean_logprob if o.logprob is None else o.logprob
    return _Design(logp, is_llm, truth, rest_logp, rest_count, top, logprob, archive, archives)


def _nll(theta: np.ndarray, d: _Design, use_logprob: bool) -> float:
    alpha = math.exp(theta[0])
    bonus = theta[1] + theta[2] * d.top + (theta[3] * d.logprob if use_logprob else 0.0)
    bonus = bonus + theta[4:][d.archive]
    scores = alpha * d.logp + d.is_llm * bonus[:, None]
    rest = np.where(
        d.rest_count > 0, np.log(np.maximum(d.rest_count, 1)) + alpha * d.rest_logp, -np.inf
    )
    stacked = np.concatenate([scores, rest[:, None]], axis=1)
    peak = stacked.max(axis=1, keepdims=True)
    log_z = peak[:, 0] + np.log(np.exp(stacked - peak).sum(axis=1))
    rows = np.arange(len(d.truth))
    truth_score = np.where(d.truth >= 0, scores[rows, np.maximum(d.truth, 0)], alpha * d.rest_logp)
    loss = float(-(truth_score - log_z).sum())
    return loss + ARCHIVE_RIDGE * float((theta[4:] ** 2).sum())


def fit(observations: Sequence[Observation], n_labels: int, *, use_logprob: bool) -> VoterParams:
    """Fit the combination and the LLM-alone calibration by maximum likelihood."""
    from scipy.optimize import minimize

    if not observations:
        raise CalibrationError("no row was answered by the LLM: nothing to fit")
    known = [o.logprob for o in observations if o.logprob is not None]
    mean_logprob = float(np.mean(known)) if known else 0.0
    d = _design(observations, n_labels, mean_logprob)
    theta0 = np.zeros(4 + len(d.archives))
    theta0[1] = 1.0
    bounds = [(math.log(0.05), math.log(5.0)), (-10, 20), (-20, 20), (-5, 5)]
    bounds += [(-5, 5)] * len(d.archives)
    if not use_logprob:
        bounds[3] = (0.0, 0.0)
    found = minimize(_nll, theta0, args=(d, use_logprob), method="L-BFGS-B", bounds=bounds)
    theta = found.x
    right = np.array([o.llm_label == o.truth for o in observations], dtype=float)
    alone_bias, alone_logprob = _fit_alone(right, d.logprob if use_logprob else None)
    return VoterParams(
        alpha=float(math.exp(theta[0])),
        bonus=float(theta[1]),
        bonus_local_confidence=float(theta[2]),
        bonus_logprob=float(theta[3]) if use_logprob else 0.0,
        mean_logprob=mean_logprob,
        bonus_archive={
            a: round(float(v), 6)
            for a, v in zip(d.archives, theta[4:], strict=True)
            if abs(v) > 1e-6
        },
        alone_bias=alone_bias,
        alone_logprob=alone_logprob,
    )


def _fit_alone(right: np.ndarray, logprob: np.ndarray | None) -> tuple[float, float]:
    """P(LLM right) = sigmoid(bias + w * logprob); without log-probabilities, the smoothed
    accuracy (a Beta(1, 1) prior)."""
    if logprob is None:
        p = (right.sum() + 1) / (len(right) + 2)
        return float(math.log(p / (1 - p))), 0.0
    from scipy.optimize import minimize

    def nll(theta: np.ndarray) -> float:
        z = theta[0] + theta[1] * logprob
        return float(np.sum(np.logaddexp(0, z) - right * z) + 0.01 * theta[1] ** 2)

    found = minimize(nll, np.zeros(2), method="L-BFGS-B", bounds=[(-20, 20), (-10, 10)])
    return float(found.x[0]), float(found.x[1])


# -- figures ---------------------------------------------------------------------------------
def out_of_fold(
    parts: Sequence[Sequence[Observation]], n_labels: int, use_logprob: bool
) -> tuple[list[Observation], list[list[Candidate]], list[float]]:
    """Each fold scored by a fit on the others: the rows, their posteriors and the LLM-alone
    confidences. With one fold, the fit scores its own rows (too few rows to hold any back)."""
    rows: list[Observation] = []
    post: list[list[Candidate]] = []
    alone: list[float] = []
    for i, part in enumerate(parts):
        others = [o for j, p in enumerate(parts) if j != i for o in p] or list(part)
        params = fit(others, n_labels, use_logprob=use_logprob)
        rows.extend(part)
        post.extend(params.combine(o.local, n_labels, o.llm_label, o.logprob) for o in part)
        alone.extend(params.llm_alone(o.logprob) for o in part)
    return rows, post, alone


def figures(
    observations: Sequence[Observation],
    post: Sequence[Sequence[Candidate]],
    alone: Sequence[float],
) -> dict[str, dict[str, Any]]:
    """Accuracy and ECE of the LLM alone, the local model alone, the LLM winning every row
    (the router without a profile) and the combination (``post``)."""
    truth = [o.truth for o in observations]

    def summary(labels: Sequence[str], confidence: Sequence[float]) -> dict[str, Any]:
        right = [p == t for p, t in zip(labels, truth, strict=True)]
        return {
            "rows": len(right),
            "accuracy": float(np.mean(right)) if right else None,
            "ece": expected_calibration_error(confidence, right) if right else None,
        }

    combined = summary([p[0].label for p in post], [p[0].score for p in post])
    combined["followed"] = dict(
        sorted(
            Counter(
                followed(p[0].label, o.llm_label, o.local[0].label if o.local else None)
                for p, o in zip(post, observations, strict=True)
            ).items()
        )
    )
    return {
        "llm_alone": summary([o.llm_label for o in observations], alone),
        "local_alone": summary(
            [o.local[0].label for o in observations], [o.local[0].score for o in observations]
        ),
        "uncombined": summary(
            [o.llm_label for o in observations], [DEFAULT_LLM_CONFIDENCE] * len(observations)
        ),
        "combined": combined,
    }


def cascade_threshold(
    observations: Sequence[Observation], post: Sequence[Sequence[Candidate]]
) -> dict[str, Any]:
    """The lowest local-confidence threshold (the fewest LLM calls) at which the cascade,
    answering rows at or above it locally and combining the rest, is within
    ``CASCADE_TOLERANCE`` of combining every row; with its accuracy and ECE."""
    top = np.array([o.local[0].score for o in observations])
    local_right = np.array([o.local[0].label == o.truth for o in observations])
    combined_right = np.array(
        [p[0].label == o.truth for p, o in zip(post, observations, strict=True)]
    )
    target = combined_right.mean() - CASCADE_TOLERANCE
    best = 1.0
    for t in sorted({0.0, *np.round(top, 4).tolist(), 1.0}):
        if np.where(top >= t, local_right, combined_right).mean() >= target:
            best = float(t)
            break
    kept = top >= best
    confidence = np.where(kept, top, [p[0].score for p in post])
    right = np.where(kept, local_right, combined_right)
    return {
        "threshold": best,
        "rows": len(right),
        "llm_calls_share": float((~kept).mean()),
        "accuracy": float(right.mean()),
        "ece": expected_calibration_error(confidence, right),
    }


def calibrate(
    observations: Sequence[Observation],
    *,
    settings: Settings,
    local_kind: str,
    local_sha256: str,
    n_labels: int,
    seed: int,
    data: str,
    failed: int,
) -> Profile:
    """Score ``observations`` out of fold for the report, fit on all of them for the
    profile."""
    with_logprob = sum(o.logprob is not None for o in observations)
    use_logprob = bool(observations) and with_logprob / len(observations) >= MIN_LOGPROB_SHARE
    if not observations:
        raise CalibrationError("no row was answered by the LLM: nothing to fit")
    parts = folds(observations, seed)
    rows, post, alone = out_of_fold(parts, n_labels, use_logprob)
    measured = figures(rows, post, alone)
    threshold = cascade_threshold(rows, post)
    measured["cascade"] = threshold
    params = fit(observations, n_labels, use_logprob=use_logprob)
    strategy: StrategyName = settings.strategy
    return Profile(
        key=ProfileKey(
            model=settings.model,
            prompt_version=prompt_version(settings, strategy),
            strategy=strategy,
            local_kind=local_kind,
            local_sha256=local_sha256,
        ),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        params=params,
        cascade_threshold=threshold["threshold"],
        rows={
            "data": data,
            "seed": seed,
            "asked": len(observations) + failed,
            "answered": len(observations),
            "fit": len(observations),
            "folds": len(parts),
            "out_of_fold": len(rows),
            "with_logprobs": with_logprob,
            "logprobs_used": use_logprob,
            "fit_ids_sha256": _ids_digest(observations),
        },
        figures=measured,
    )


def _ids_digest(observations: Sequence[Observation]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(o.row_id for o in observations)).encode()).hexdigest()


def report_table(profile: Profile) -> str:
    """The held-back figures as a small table."""
    f = profile.figures
    lines = [
        f"calibration of {profile.key.model} ({profile.key.strategy}, prompt "
        f"{profile.key.prompt_version}) with {profile.key.local_kind}: {profile.rows['fit']} "
        f"rows, each measured by a fit on the other folds ({profile.rows['folds']}-fold)"
        + (" (log-probabilities used)" if profile.rows.get("logprobs_used") else ""),
        f"{'system':<30} {'accuracy':>9} {'ECE':>7}",
    ]
    names = {
        "llm_alone": "LLM alone",
        "local_alone": f"{profile.key.local_kind} alone",
        "uncombined": "LLM wins (no profile)",
        "combined": "combined (this profile)",
    }
    for key, name in names.items():
        row = f.get(key, {})
        lines.append(f"{name:<30} {_pct(row.get('accuracy')):>9} {_num(row.get('ece')):>7}")
    cascade = f.get("cascade", {})
    if cascade:
        lines.append(
            f"cascade threshold {cascade['threshold']:.3f}: {_pct(cascade['accuracy'])} right, "
            f"{_pct(cascade['llm_calls_share'])} of rows sent to the LLM"
        )
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
