"""TfidfClassifier: word 1-2-gram TF-IDF features, a softmax regression and a small network,
averaged.

Both heads read the same TF-IDF vector (title + abstract, ``features.WordNgramTfidf``):

- a multinomial logistic regression (the features straight to the 96 logits), and
- a one-hidden-layer network (``relu(x @ w1 + b1) @ w2 + b2``).

Their first layers are sparse lookups trained with plain SGD (only the rows of the features
a batch holds are touched, so an epoch over 80k abstracts takes seconds), the small dense
layers with Adam. Each head's logits are calibrated with a softmax temperature fitted on
held-out training rows (a random slice, or the most recently published slice); the two
log-probability vectors are averaged and the mix gets a temperature of its own, fitted on the
same rows (an average of calibrated heads is less sure than either). Training needs torch;
inference is numpy/scipy.

The large matrices are stored as int8 with one float scale per row (``weight_bits=8``);
the model is evaluated with the weights it saves. Files: ``vocab.json`` (token table),
``weights.npz`` (feature keys, idf, heads, temperatures) and ``config.json``: plain arrays
and JSON, never pickle.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from fallback_models.artifacts import clear_directory, verify_artifacts, write_manifest
from fallback_models.features import WordNgramTfidf
from fallback_models.topk import TOP_K, classify_timed
from llm_router.errors import ModelNotAvailable
from llm_router.labels import LabelSet
from llm_router.schemas import Classification

logger = logging.getLogger(__name__)

FEATURES_FORMAT = "word-ngram-tfidf/2"
CALIBRATION_SLICES = ("random", "latest")


@dataclass(frozen=True)
class TfidfConfig:
    """Hyper-parameters; the defaults were chosen on the shared arXiv data (BENCHMARKS.md)."""

    max_features: int = 250_000
    min_df: int = 2
    ngram_max: int = 2
    batch_size: int = 512
    linear_epochs: int = 2
    linear_lr: float = 1000.0  # SGD on the batch-mean loss of L2-normalised rows
    mlp_hidden: int = 96  # 0: the softmax regression alone
    mlp_epochs: int = 4
    mlp_lr: float = 200.0  # SGD for the network's sparse first layer
    dense_lr: float = 3e-3  # Adam for the biases and the network's second layer
    mlp_dropout: float = 0.3
    min_steps: int = 120  # small data sets get more epochs, so that each head gets this many
    linear_weight: float = 0.5  # share of the regression in the averaged log-probabilities
    weight_bits: int = 8  # 8: int8 with a scale per row; 16: float16
    calibration_fraction: float = 0.03
    calibration: str = "random"  # or "latest": the most recently published training rows
    seed: int = 42

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATION_SLICES:
            raise ValueError(f"calibration must be one of {CALIBRATION_SLICES}")
        if self.weight_bits not in (8, 16):
            raise ValueError("weight_bits must be 8 or 16")


@dataclass
class Head:
    """Logits of a sparse TF-IDF batch: ``x @ w1 + b1`` when ``w2`` is None (the softmax
    regression), else ``relu(x @ w1 + b1) @ w2 + b2``."""

    w1: np.ndarray  # (n_features, width) float32, C order: scipy copies other layouts per call
    b1: np.ndarray
    w2: np.ndarray | None = None
    b2: np.ndarray | None = None

    def logits(self, x: sp.csr_matrix) -> np.ndarray:
        z: np.ndarray = np.asarray(x @ self.w1) + self.b1
        if self.w2 is None or self.b2 is None:
            return z
        return np.asarray(np.maximum(z, 0.0) @ self.w2 + self.b2)

    def arrays(self, prefix: str, bits: int) -> dict[str, np.ndarray]:
        found = {f"{prefix}_b1": self.b1}
        found.update(_pack(f"{prefix}_w1", self.w1, bits))
        if self.w2 is not None and self.b2 is not None:
            found.update({f"{prefix}_w2": self.w2, f"{prefix}_b2": self.b2})
        return found

    @classmethod
    def from_arrays(cls, prefix: str, arrays: dict[str, np.ndarray]) -> Head:
        return cls(
            _unpack(f"{prefix}_w1", arrays),
            arrays[f"{prefix}_b1"],
            arrays.get(f"{prefix}_w2"),
            arrays.get(f"{prefix}_b2"),
        )


def _pack(name: str, w: np.ndarray, bits: int) -> dict[str, np.ndarray]:
    """int8 with a float32 scale per row (symmetric), or float16."""
    if bits == 16:
        return {name: w.astype(np.float16)}
    scale = np.abs(w).max(axis=1) / 127.0
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(w / safe[:, None]), -127, 127).astype(np.int8)
    return {name: q, f"{name}_scale": scale.astype(np.float32)}


def _unpack(name: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
    w = arrays[name]
    if f"{name}_scale" in arrays:
        w = w.astype(np.float32) * arrays[f"{name}_scale"][:, None]
    return np.ascontiguousarray(w, dtype=np.float32)


def _as_saved(w: np.ndarray, bits: int) -> np.ndarray:
    """``w`` as it will be after a save and a load: the model is evaluated as it ships."""
    return _unpack("w", _pack("w", w, bits))


def _require_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # torch is a dependency; a broken install still says so
        raise ModelNotAvailable(
            "training the tfidf model needs torch: pip install torch",
            classifier="tfidf",
            reason="missing_dependency",
        ) from exc
    return torch


def _train_head(
    x: sp.csr_matrix,
    y: np.ndarray,
    n_labels: int,
    *,
    hidden: int,
    epochs: int,
    lr: float,
    config: TfidfConfig,
    say: Callable[[str], None],
) -> Head:
    """Train one head; ``hidden=0`` trains the softmax regression."""
    torch = _require_torch()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    width = hidden or n_labels
    first = torch.nn.EmbeddingBag(x.shape[1], width, mode="sum", sparse=True)
    torch.nn.init.normal_(first.weight, std=0.02 if hidden else 0.0)
    bias = torch.nn.Parameter(torch.zeros(width))
    out = torch.nn.Linear(hidden, n_labels) if hidden else None
    dropout = torch.nn.Dropout(config.mlp_dropout)
    sparse_opt = torch.optim.SGD(list(first.parameters()), lr=lr)
    dense = [bias, *(out.parameters() if out is not None else [])]
    dense_opt = torch.optim.Adam(dense, lr=config.dense_lr)
    targets = torch.from_numpy(y.astype(np.int64))
    batches = math.ceil(x.shape[0] / config.batch_size)
    epochs = max(epochs, math.ceil(config.min_steps / batches))
    what = f"network (hidden {hidden})" if hidden else "softmax regression"
    for epoch in range(epochs):
        say(f"training the {what}, epoch {epoch + 1}/{epochs}")
        order = rng.permutation(x.shape[0])
        for start in range(0, len(order), config.batch_size):
            rows = order[start : start + config.batch_size]
            batch = x[rows]
            z = first(
                torch.from_numpy(batch.indices.astype(np.int64)),
                torch.from_numpy(batch.indptr[:-1].astype(np.int64)),
                per_sample_weights=torch.from_numpy(batch.data.astype(np.float32)),
            )
            z = z + bias
            logits = out(dropout(torch.relu(z))) if out is not None else z
            loss = torch.nn.functional.cross_entropy(logits, targets[rows])
            sparse_opt.zero_grad()
            dense_opt.zero_grad()
            loss.backward()
            sparse_opt.step()
            dense_opt.step()
    bits = config.weight_bits
    with torch.no_grad():
        w1 = _as_saved(first.weight.numpy(), bits)
        b1 = bias.numpy().astype(np.float32).copy()
        if out is None:
            return Head(w1, b1)
        return Head(
            w1,
            b1,
            out.weight.numpy().T.astype(np.float32).copy(),
            out.bias.numpy().astype(np.float32).copy(),
        )


def _fit_temperature(scores: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature that minimises the log loss of held-out logits."""

    def nll(log_t: float) -> float:
        logp = log_softmax(scores / np.exp(log_t), axis=1)
        return float(-logp[np.arange(len(y)), y].mean())

    result = minimize_scalar(nll, bounds=(np.log(1e-3), np.log(10.0)), method="bounded")
    return float(np.exp(result.x))


def calibration_rows(
    n: int, config: TfidfConfig, published: Sequence[str | None] | None = None
) -> np.ndarray:
    """Which of ``n`` training rows calibrate (boolean mask): a seeded random slice, or with
    ``calibration="latest"`` the most recently published ones (undated rows count as oldest;
    ties broken by position)."""
    size = round(config.calibration_fraction * n)
    mask = np.zeros(n, dtype=bool)
    if size == 0:
        return mask
    if config.calibration == "latest":
        if published is None or len(published) != n:
            raise ValueError("calibration='latest' needs the rows' published dates")
        order = sorted(range(n), key=lambda i: (published[i] or "", i))
        mask[order[-size:]] = True
        return mask
    rng = np.random.default_rng(config.seed)
    mask[rng.choice(n, size=size, replace=False)] = True
    return mask


class TfidfClassifier:
    """The fast local fallback: calibrated top-k probabilities over the deployed labels."""

    name = "tfidf"

    def __init__(
        self,
        labels: LabelSet,
        features: WordNgramTfidf,
        linear: Head,
        config: TfidfConfig,
        mlp: Head | None = None,
        temperatures: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> None:
        self.labels = labels
        self.features = features
        self.linear = linear
        self.mlp = mlp
        self.config = config
        self.temperatures = temperatures  # (regression, network, their combination)
        self.metrics: dict[str, Any] = {}

    @property
    def temperature(self) -> float:
        return self.temperatures[0]

    # -- training ---------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        texts: Sequence[str],
        targets: Sequence[str],
        labels: LabelSet,
        config: TfidfConfig | None = None,
        progress: Callable[[str], None] | None = None,
        published: Sequence[str | None] | None = None,
    ) -> TfidfClassifier:
        """Fit on ``texts`` with deployed-label ``targets``; a slice calibrates the scores
        (``published`` dates are needed when ``config.calibration == "latest"``)."""
        config = config or TfidfConfig()
        say = progress or (lambda _msg: None)
        y = np.array([labels.index(t) for t in targets])
        calib = calibration_rows(len(y), config, published)
        fit_idx, cal_idx = np.flatnonzero(~calib), np.flatnonzero(calib)

        say("vectorising (word 1-2-grams)")
        features, x_fit = WordNgramTfidf.fit(
            [texts[int(i)] for i in fit_idx],
            max_features=config.max_features,
            min_df=config.min_df,
            ngram_max=config.ngram_max,
        )
        if features.n_features == 0:
            raise ValueError("no n-gram occurs in min_df training texts: too little data")
        y_fit = y[fit_idx]
        linear = _train_head(
            x_fit,
            y_fit,
            len(labels),
            hidden=0,
            epochs=config.linear_epochs,
            lr=config.linear_lr,
            config=config,
            say=say,
        )
        mlp = None
        if config.mlp_hidden > 0:
            mlp = _train_head(
                x_fit,
                y_fit,
                len(labels),
                hidden=config.mlp_hidden,
                epochs=config.mlp_epochs,
                lr=config.mlp_lr,
                config=config,
                say=say,
            )
        del x_fit
        model = cls(labels, features, linear, config, mlp)
        if len(cal_idx):
            say(f"calibrating on {len(cal_idx):,} held-out rows ({config.calibration})")
            x_cal = features.transform([texts[int(i)] for i in cal_idx])
            t_linear = _fit_temperature(linear.logits(x_cal), y[cal_idx])
            t_mlp = _fit_temperature(mlp.logits(x_cal), y[cal_idx]) if mlp is not None else 1.0
            model.temperatures = (t_linear, t_mlp, 1.0)
            if mlp is not None:  # averaging calibrated heads blunts them: calibrate the mix
                t_out = _fit_temperature(model._combined(x_cal), y[cal_idx])
                model.temperatures = (t_linear, t_mlp, t_out)
        return model

    # -- inference --------------------------------------------------------------------------
    def _combined(self, x: sp.csr_matrix) -> np.ndarray:
        """The heads' calibrated log-probabilities, averaged (logits of the final softmax)."""
        t_linear, t_mlp, _ = self.temperatures
        logp: np.ndarray = log_softmax(self.linear.logits(x) / t_linear, axis=1)
        if self.mlp is not None:
            weight = self.config.linear_weight
            logp = weight * logp + (1.0 - weight) * log_softmax(self.mlp.logits(x) / t_mlp, axis=1)
        return logp

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Calibrated probabilities, shape (len(texts), len(labels)), columns in label order."""
        x = self.features.transform(texts)
        return np.asarray(softmax(self._combined(x) / self.temperatures[2], axis=1))

    @property
    def model_name(self) -> str:
        return "tfidf-softmax+mlp" if self.mlp is not None else "tfidf-softmax"

    def classify_batch(self, texts: Sequence[str], top_k: int = TOP_K) -> list[Classification]:
        return classify_timed(
            self.predict_proba,
            texts,
            self.labels,
            source=self.name,
            model=self.model_name,
            top_k=top_k,
        )

    def classify(self, text: str) -> Classification:
        return self.classify_batch([text])[0]

    # -- storage ----------------------------------------------------------------------------
    def save(self, directory: Path, **manifest_fields: Any) -> dict[str, Any]:
        """Write the model as JSON + ``.npz`` and a manifest with every file's sha256."""
        clear_directory(directory)
        bits = self.config.weight_bits
        arrays: dict[str, np.ndarray] = {
            "keys": self.features.keys,
            "idf": self.features.idf,
            "temperatures": np.array(self.temperatures, dtype=np.float64),
            **self.linear.arrays("linear", bits),
        }
        if self.mlp is not None:
            arrays.update(self.mlp.arrays("mlp", bits))
        vocab = {
            "format": FEATURES_FORMAT,
            "ngram_max": self.features.ngram_max,
            "tokens": self.features.tokens,
        }
        (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        np.savez(directory / "weights.npz", allow_pickle=False, **arrays)
        (directory / "config.json").write_text(json.dumps(asdict(self.config), indent=2))
        return write_manifest(directory, "tfidf", self.labels, **manifest_fields)

    @classmethod
    def load(cls, directory: Path) -> TfidfClassifier:
        """Verify the directory against its manifest, then load it (no pickle involved).

        Raises:
            ModelNotAvailable: missing, incomplete, tampered or outdated artifacts.
        """
        manifest = verify_artifacts(directory, "tfidf")
        try:
            vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
            if not isinstance(vocab, dict) or vocab.get("format") != FEATURES_FORMAT:
                raise ModelNotAvailable(
                    f"the tfidf model in {directory} was trained by an older version of "
                    "llm-router; retrain it: python -m fallback_models train tfidf --data PATH",
                    classifier="tfidf",
                    reason="bad_artifacts",
                )
            labels = LabelSet.from_dict(manifest["label_set"])
            config = TfidfConfig(**json.loads((directory / "config.json").read_text()))
            with np.load(directory / "weights.npz", allow_pickle=False) as weights:
                arrays = {key: weights[key] for key in weights.files}
            features = WordNgramTfidf(
                vocab["tokens"], arrays["keys"], arrays["idf"], int(vocab["ngram_max"])
            )
            linear = Head.from_arrays("linear", arrays)
            mlp = Head.from_arrays("mlp", arrays) if "mlp_w1" in arrays else None
            t_linear, t_mlp, t_out = (float(t) for t in arrays["temperatures"])
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise ModelNotAvailable(
                f"cannot load tfidf model from {directory}: {exc}",
                classifier="tfidf",
                reason="bad_artifacts",
            ) from exc
        model = cls(labels, features, linear, config, mlp, (t_linear, t_mlp, t_out))
        model.metrics = manifest.get("metrics", {})
        return model
