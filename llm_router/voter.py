"""The LLM as a calibrated voter: its answer is evidence, weighed by how reliable it was measured.

The router combines the LLM's answer ``a`` with the local model's calibrated distribution ``p``
by a small log-linear model, fitted on labelled rows by ``python -m eval --calibrate``::

    score(y) = alpha * log p(y) + [y == a] * bonus
    bonus    = b0 + b_conf * p(top-1) + b_logprob * logprob(a) + b_archive[archive(a)]
    P(y | p, a) = softmax(score)(y)

``bonus`` is the log-odds the LLM's answer adds: large for a strong endpoint (its answer carries
the decision), small for a weak one (a confident local model overrules it). ``b_conf`` lets the
LLM weigh more where the local model is unsure; ``b_logprob`` uses the endpoint's token
log-probabilities when it gives them; ``b_archive`` (shrunk towards 0) lets it be better in some
archives than others. The fit minimises the log-loss, so ``P`` is calibrated: the answer's
``confidence`` is its posterior.

The fitted numbers live in a *profile*: a small versioned JSON file under
``LLM_ROUTER_MODEL_DIR/profiles/``. It applies only to the setup it was measured on: the same
endpoint model, prompt, strategy and local model (by sha256). Anything else, a corrupt file or
one from a newer version, is ignored with one log line, and LLM answers keep the default
confidence :data:`~llm_router.schemas.DEFAULT_LLM_CONFIDENCE`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llm_router.labels import archive_of
from llm_router.schemas import DEFAULT_LLM_CONFIDENCE, Candidate

logger = logging.getLogger(__name__)

PROFILE_FORMAT = 1  # bumped when a profile's meaning changes; newer ones are ignored
PROFILE_DIR = "profiles"  # under the model root, beside the model folders
LOCAL_TOP_K = 20  # local candidates the combination reads (the rest share the remaining mass)
_MIN_P = 1e-9


class ProfileKey(BaseModel):
    """The setup a profile was measured on; it applies to that setup only."""

    model_config = ConfigDict(frozen=True)

    model: str  # the endpoint's model id, as configured (LLM_ROUTER_MODEL)
    prompt_version: str  # the prompt(s) the strategy asks with
    strategy: str
    local_kind: str  # the local model whose distribution is combined
    local_sha256: str

    def file_name(self) -> str:
        digest = hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]
        slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in self.model)[:40]
        return f"{slug}.{self.strategy}.{digest}.json"

    def differences(self, other: ProfileKey) -> list[str]:
        """The fields in which ``other`` differs from this key."""
        return [
            f"{name} {getattr(other, name)!r} (here {getattr(self, name)!r})"
            for name in type(self).model_fields
            if getattr(self, name) != getattr(other, name)
        ]


class VoterParams(BaseModel):
    """The fitted numbers of the combination (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    alpha: float = Field(gt=0)
    bonus: float
    bonus_local_confidence: float = 0.0
    bonus_logprob: float = 0.0  # 0 when fitted without log-probabilities
    mean_logprob: float = 0.0  # stands in for an answer that has none
    bonus_archive: dict[str, float] = Field(default_factory=dict)
    # The LLM alone: P(right) = sigmoid(alone_bias + alone_logprob * logprob)
    alone_bias: float
    alone_logprob: float = 0.0

    def llm_alone(self, logprob: float | None) -> float:
        """Calibrated P(the LLM's answer is right), from its log-probability when known."""
        lp = self.mean_logprob if logprob is None else logprob
        return _sigmoid(self.alone_bias + self.alone_logprob * lp)

    def bonus_for(self, label: str, local_top: float, logprob: float | None) -> float:
        lp = self.mean_logprob if logprob is None else logprob
        return (
            self.bonus
            + self.bonus_local_confidence * local_top
            + self.bonus_logprob * lp
            + self.bonus_archive.get(archive_of(label), 0.0)
        )

    def combine(
        self,
        local: Sequence[Candidate],
        n_labels: int,
        llm_label: str,
        logprob: float | None,
    ) -> list[Candidate]:
        """The posterior over the local candidates and the LLM's label, best first.

        ``local`` is the local model's top candidates (probabilities over ``n_labels``
        labels); labels it does not list share the remaining probability mass equally.
        """
        probs = {c.label: max(_MIN_P, c.score) for c in local}
        listed = sum(probs.values())
        unlisted = max(1, n_labels - len(probs))
        rest_each = max(_MIN_P, (1.0 - min(listed, 1.0)) / unlisted)
        if llm_label not in probs:
            probs[llm_label] = rest_each
        others = max(0, n_labels - len(probs))  # labels in neither list
        top = max((c.score for c in local), default=0.0)
        bonus = self.bonus_for(llm_label, top, logprob)
        scores = {
            label: self.alpha * math.log(p) + (bonus if label == llm_label else 0.0)
            for label, p in probs.items()
        }
        rest_score = self.alpha * math.log(rest_each)
        peak = max(*scores.values(), rest_score)
        total = sum(math.exp(s - peak) for s in scores.values()) + others * math.exp(
            rest_score - peak
        )
        posterior = [
            Candidate(label=label, score=math.exp(s - peak) / total) for label, s in scores.items()
        ]
        return sorted(posterior, key=lambda c: -c.score)


class Profile(BaseModel):
    """A calibration profile: the setup, the fitted numbers, where they came from and what
    they measured on rows held back from the fit that scored them."""

    format: int = PROFILE_FORMAT
    key: ProfileKey
    created: str
    params: VoterParams
    cascade_threshold: float | None = Field(None, ge=0.0, le=1.0)
    rows: dict[str, Any] = Field(default_factory=dict)
    figures: dict[str, Any] = Field(default_factory=dict)

    def describe(self) -> str:
        held = self.figures.get("combined", {})
        measured = ""
        if "accuracy" in held:
            measured = (
                f"; out-of-fold accuracy {held['accuracy']:.3f}, ECE {held.get('ece', 0):.3f}"
            )
        return (
            f"model {self.key.model}, prompt {self.key.prompt_version}, strategy "
            f"{self.key.strategy}, local {self.key.local_kind} {self.key.local_sha256[:12]}, "
            f"fitted on {self.rows.get('fit', '?')} rows{measured}"
        )


def profile_dir(model_dir: Path) -> Path:
    return Path(model_dir) / PROFILE_DIR


def write_profile(model_dir: Path, profile: Profile) -> Path:
    """Write ``profile`` atomically (a reader never sees half a file); returns its path."""
    folder = profile_dir(model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / profile.key.file_name()
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(profile.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_profile(path: Path) -> Profile:
    """One profile file. Raises ValueError with a one-line reason (corrupt, newer format)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    found = raw.get("format")
    if isinstance(found, int) and found > PROFILE_FORMAT:
        raise ValueError(f"format {found} is newer than this version reads ({PROFILE_FORMAT})")
    try:
        return Profile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "profile"
        raise ValueError(f"invalid ({where}: {first['msg']})") from None


class Calibration:
    """Finds the profile for the router's setup among ``model_dir/profiles/*.json``.

    The folder is looked at again when it changes (checked at most every ``check_s``), so a
    running service picks up a new calibration. Each outcome is logged once: the profile
    loaded, or why none applies (and why each other file was ignored).
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        model: str,
        prompt_version: str,
        strategy: str,
        enabled: bool = True,
        check_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.model = model
        self.prompt_version = prompt_version
        self.strategy = strategy
        self.enabled = enabled
        self.check_s = check_s
        self._clock = clock
        self._found: dict[tuple[str, str], Profile | None] = {}
        self._stamp: object = None
        self._next_check = -math.inf
        self._logged: set[str] = set()
        self._lock = threading.Lock()

    def key(self, local_kind: str, local_sha256: str) -> ProfileKey:
        return ProfileKey(
            model=self.model,
            prompt_version=self.prompt_version,
            strategy=self.strategy,
            local_kind=local_kind,
            local_sha256=local_sha256,
        )

    def profile_for(self, local_kind: str, local_sha256: str | None) -> Profile | None:
        """The matching profile for answers combined with ``local_kind``, or None."""
        if not self.enabled or local_sha256 is None:
            return None
        wanted = (local_kind, local_sha256)
        with self._lock:
            now = self._clock()
            if now >= self._next_check:
                self._next_check = now + self.check_s
                stamp = _folder_stamp(profile_dir(self.model_dir))
                if stamp != self._stamp:
                    self._stamp, self._found = stamp, {}
            if wanted not in self._found:
                self._found[wanted] = self._search(self.key(*wanted))
            return self._found[wanted]

    def _search(self, key: ProfileKey) -> Profile | None:
        folder = profile_dir(self.model_dir)
        chosen: Profile | None = None
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                profile = read_profile(path)
            except ValueError as exc:
                self._once(f"calibration profile {path} ignored: {exc}")
                continue
            differs = key.differences(profile.key)
            if differs:
                self._once(
                    f"calibration profile {path.name} ignored: measured for another setup "
                    f"({'; '.join(differs)})",
                    level=logging.INFO,
                )
            elif chosen is None or profile.created > chosen.created:
                chosen = profile
        if chosen is not None:
            self._once(f"calibration profile loaded: {chosen.describe()}", level=logging.INFO)
        else:
            self._once(
                f"no calibration profile for model {key.model}, prompt {key.prompt_version}, "
                f"strategy {key.strategy}, local {key.local_kind} under {folder}: LLM answers "
                f"win with confidence {DEFAULT_LLM_CONFIDENCE} (measure this endpoint with "
                "python -m eval --calibrate)"
            )
        return chosen

    def _once(self, message: str, level: int = logging.WARNING) -> None:
        if message not in self._logged:
            self._logged.add(message)
            logger.log(level, "%s", message)


def _folder_stamp(folder: Path) -> object:
    try:
        entries = sorted(
            (entry.name, entry.stat().st_mtime_ns, entry.stat().st_size)
            for entry in os.scandir(folder)
            if entry.name.endswith(".json")
        )
    except OSError:
        return None
    return tuple(entries)


def followed(label: str, llm_label: str, local_top: str | None) -> str:
    """Whose answer the combination kept."""
    if label == llm_label:
        return "agree" if label == local_top else "llm"
    return "local" if label == local_top else "neither"


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)
