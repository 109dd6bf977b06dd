"""TfidfClassifier: word 1-2-gram TF-IDF features, a softmax regression and small networks,
averaged.

Every head reads the same TF-IDF vector (title + abstract, ``features.WordNgramTfidf``):

- a multinomial logistic regression (the features straight to the 96 logits), and
- one-hidden-layer networks (``relu(x @ w1 + b1) @ w2 + b2``), by default two of different
  widths and seeds.

Their first layers are sparse lookups: a step gathers only the rows of the features its batch
holds, so an epoch over 80k abstracts takes seconds. The regression's rows are updated with
plain SGD, the networks' with row-wise Adagrad (one accumulated squared gradient per feature,
so rare n-grams keep large steps; with SGD a network was weaker than the regression alone);
the small dense layers with Adam. Each head's logits are calibrated with a softmax
temperature fitted on held-out training rows (a random slice, or the most recently published
slice); the heads' log-probability vectors are averaged and the mix gets a temperature of its
own, fitted on the same rows (an average of calibrated heads is less sure than any of them).
Training needs torch; inference is numpy/scipy.

The large matrices are stored as 4-bit integers with one float scale per row
(``weight_bits=4``; 8 and 16 are the alternatives), which costs no accuracy (BENCHMARKS.md);
the model is evaluated with the weights it saves. Files: ``vocab.json`` (token table),
``weights.npz`` (feature keys, idf, heads, temperatures) and ``config.json``: plain arrays
and JSON, never pickle.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.special import log_softmax, softmax

from fallback_models.artifacts import staged_directory, verify_artifacts, write_manifest
from fallback_models.features import WordNgramTfidf
from fallback_models.scoring import fit_temperature
from fallback_models.topk import TOP_K, classify_timed
from llm_router.errors import ModelNotAvailable
from llm_router.labels import LabelSet
from llm_router.schemas import Classification

logger = logging.getLogger(__name__)

FEATURES_FORMAT = "word-ngram-tfidf/2"
CALIBRATION_SLICES = ("random", "latest")
WEIGHT_BITS = (4, 8, 16)
_PACK_ROWS = 16_384


@dataclass(frozen=True)
class TfidfConfig:
    """Hyper-parameters; the defaults were chosen on the shared arXiv data (BENCHMARKS.md)."""

    max_features: int = 250_000
    min_df: int = 2
    ngram_max: int = 2
    batch_size: int = 512  # the regression's
    linear_epochs: int = 2
    linear_lr: float = 1000.0  # SGD on the batch-mean loss of L2-normalised rows
    mlp_hidden: tuple[int, ...] = (192, 128)  # one network per width; (): the regression alone
    mlp_epochs: int = 4
    mlp_batch_size: int = 256
    mlp_lr: float = 0.05  # row-wise Adagrad for the network's sparse first layer
    dense_lr: float = 2e-3  # Adam for the biases and the network's second layer
    mlp_dropout: float = 0.3
    min_steps: int = 120  # small data sets get more epochs, so that each head gets this many
    linear_weight: float | None = None  # the regression's share of the average; None: equal
    weight_bits: int = 4  # 4 or 8: integers with a scale per row; 16: float16
    calibration_fraction: float = 0.01  # four temperatures need few rows; the rest trains
    calibration: str = "random"  # or "latest": the most recently published training rows
    seed: int = 42

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATION_SLICES:
            raise ValueError(f"calibration must be one of {CALIBRATION_SLICES}")
        widths = self.mlp_hidden
        if isinstance(widths, int):  # config.json of a one-network model: 0 or the width
            widths = (widths,) if widths > 0 else ()
        object.__setattr__(self, "mlp_hidden", tuple(int(w) for w in widths))
        if any(w <= 0 for w in self.mlp_hidden):
            raise ValueError("mlp_hidden holds positive widths")
        if self.weight_bits not in WEIGHT_BITS:
            raise ValueError(f"weight_bits must be one of {WEIGHT_BITS}")


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
    """float16, or symmetric integers with a float32 scale per row: int8, or 4-bit values
    in [-7, 7] stored two to a byte (``{name}_q4``, the column count in ``{name}_cols``).
    Quantised a block of rows at a time, so that no full-size float temporary is made."""
    if bits == 16:
        return {name: w.astype(np.float16)}
    top = 127 if bits == 8 else 7
    scale = (np.abs(w).max(axis=1) / top).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0)
    cols = w.shape[1]
    width = cols if bits == 8 else (cols + 1) // 2
    q = np.empty((w.shape[0], width), dtype=np.int8 if bits == 8 else np.uint8)
    for start in range(0, w.shape[0], _PACK_ROWS):
        block = slice(start, start + _PACK_ROWS)
        values = np.clip(np.rint(w[block] / safe[block, None]), -top, top).astype(np.int8)
        if bits == 8:
            q[block] = values
            continue
        if cols % 2:
            values = np.pad(values, ((0, 0), (0, 1)))
        nibbles = (values + 8).astype(np.uint8)
        q[block] = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)
    if bits == 8:
        return {name: q, f"{name}_scale": scale}
    return {f"{name}_q4": q, f"{name}_scale": scale, f"{name}_cols": np.array(cols)}


def _unpack(name: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
    if f"{name}_q4" in arrays:
        packed, scale = arrays[f"{name}_q4"], arrays[f"{name}_scale"]
        cols = int(arrays[f"{name}_cols"])
        w = np.empty((packed.shape[0], cols), dtype=np.float32)
        for start in range(0, packed.shape[0], _PACK_ROWS):
            block = slice(start, start + _PACK_ROWS)
            both = np.empty((len(packed[block]), 2 * packed.shape[1]), dtype=np.float32)
            both[:, 0::2] = packed[block] & 0x0F
            both[:, 1::2] = packed[block] >> 4
            both -= 8.0
            both *= scale[block, None]
            w[block] = both[:, :cols]
        return w
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
    batch_size: int,
    config: TfidfConfig,
    say: Callable[[str], None],
) -> Head:
    """Train one head; ``hidden=0`` trains the softmax regression (SGD on its sparse rows),
    else the network (row-wise Adagrad on its sparse rows)."""
    torch = _require_torch()
    functional = torch.nn.functional
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    width = hidden or n_labels
    weight = torch.zeros(x.shape[1], width)
    if hidden:
        torch.nn.init.normal_(weight, std=0.02)
    # Row-wise Adagrad (the networks only): each feature's accumulated mean squared gradient.
    squares = torch.zeros(x.shape[1] if hidden else 0)
    bias = torch.nn.Parameter(torch.zeros(width))
    out = torch.nn.Linear(hidden, n_labels) if hidden else None
    dropout = torch.nn.Dropout(config.mlp_dropout)
    dense = [bias, *(out.parameters() if out is not None else [])]
    dense_opt = torch.optim.Adam(dense, lr=config.dense_lr)
    targets = torch.from_numpy(y.astype(np.int64))
    batches = math.ceil(x.shape[0] / batch_size)
    epochs = max(epochs, math.ceil(config.min_steps / batches))
    what = f"network (hidden {hidden})" if hidden else "softmax regression"
    for epoch in range(epochs):
        say(f"training the {what}, epoch {epoch + 1}/{epochs}")
        order = rng.permutation(x.shape[0])
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = x[rows]
            # Only the rows of the features in this batch take part in the step.
            used, position = torch.unique(
                torch.from_numpy(batch.indices.astype(np.int64)), return_inverse=True
            )
            rows_w = weight.index_select(0, used).requires_grad_()
            z = functional.embedding_bag(
                position,
                rows_w,
                torch.from_numpy(batch.indptr[:-1].astype(np.int64)),
                mode="sum",
                per_sample_weights=torch.from_numpy(batch.data.astype(np.float32)),
            )
            z = z + bias
            logits = out(dropout(torch.relu(z))) if out is not None else z
            loss = functional.cross_entropy(logits, targets[rows])
            dense_opt.zero_grad()
            loss.backward()
            dense_opt.step()
            with torch.no_grad():
                grad = rows_w.grad
                if hidden:
                    seen = squares.index_select(0, used) + (grad * grad).mean(dim=1)
                    squares.index_copy_(0, used, seen)
                    step = grad / (seen.sqrt()[:, None] + 1e-10)
                else:
                    step = grad
                weight.index_copy_(0, used, rows_w.detach() - lr * step)
    bits = config.weight_bits
    with torch.no_grad():
        w1 = _as_saved(weight.numpy(), bits)
        b1 = bias.numpy().astype(np.float32).copy()
        if out is None:
            return Head(w1, b1)
        return Head(
            w1,
            b1,
            out.weight.numpy().T.astype(np.float32).copy(),
            out.bias.numpy().astype(np.float32).copy(),
        )


def _network_prefix(n: int) -> str:
    """Array names of the n-th network: ``mlp``, then ``mlp1``, ``mlp2``, ..."""
    return f"mlp{n}" if n else "mlp"


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
        networks: Sequence[Head] = (),
        temperatures: Sequence[float] | None = None,
    ) -> None:
        self.labels = labels
        self.features = features
        self.linear = linear
        self.networks = list(networks)
        self.config = config
        # The regression's, each network's, then their combination's.
        self.temperatures = list(temperatures or [1.0] * (len(self.networks) + 2))
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
            batch_size=config.batch_size,
            config=config,
            say=say,
        )
        networks = [
            _train_head(
                x_fit,
                y_fit,
                len(labels),
                hidden=hidden,
                epochs=config.mlp_epochs,
                lr=config.mlp_lr,
                batch_size=config.mlp_batch_size,
                config=replace(config, seed=config.seed + n),
                say=say,
            )
            for n, hidden in enumerate(config.mlp_hidden, start=1)
        ]
        del x_fit
        model = cls(labels, features, linear, config, networks)
        if len(cal_idx):
            say(f"calibrating on {len(cal_idx):,} held-out rows ({config.calibration})")
            x_cal = features.transform([texts[int(i)] for i in cal_idx])
            y_cal = y[cal_idx]
            heads = [linear, *networks]
            model.temperatures = [fit_temperature(h.logits(x_cal), y_cal) for h in heads] + [1.0]
            if networks:  # averaging calibrated heads blunts them: calibrate the mix
                model.temperatures[-1] = fit_temperature(model._combined(x_cal), y_cal)
        return model

    # -- inference --------------------------------------------------------------------------
    def _combined(self, x: sp.csr_matrix) -> np.ndarray:
        """The heads' calibrated log-probabilities, averaged (logits of the final softmax)."""
        heads = [self.linear, *self.networks]
        logps: list[np.ndarray] = [  # the last temperature is the mix's
            log_softmax(head.logits(x) / t, axis=1)
            for head, t in zip(heads, self.temperatures[:-1], strict=True)
        ]
        if len(logps) == 1:
            return logps[0]
        share = self.config.linear_weight
        if share is None:
            share = 1.0 / len(logps)
        rest = (1.0 - share) / (len(logps) - 1)
        combined: np.ndarray = share * logps[0] + rest * sum(logps[1:])
        return combined

    def log_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Calibrated log-probabilities (the ensemble pools these)."""
        x = self.features.transform(texts)
        return np.asarray(log_softmax(self._combined(x) / self.temperatures[-1], axis=1))

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Calibrated probabilities, shape (len(texts), len(labels)), columns in label order."""
        x = self.features.transform(texts)
        return np.asarray(softmax(self._combined(x) / self.temperatures[-1], axis=1))

    @property
    def model_name(self) -> str:
        if not self.networks:
            return "tfidf-softmax"
        return "tfidf-softmax+" + "+".join(f"mlp{h.w1.shape[1]}" for h in self.networks)

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
        with staged_directory(directory) as staging:
            return self._write(staging, **manifest_fields)

    def _write(self, directory: Path, **manifest_fields: Any) -> dict[str, Any]:
        bits = self.config.weight_bits
        arrays: dict[str, np.ndarray] = {
            "keys": self.features.keys,
            "idf": self.features.idf,
            "temperatures": np.array(self.temperatures, dtype=np.float64),
            **self.linear.arrays("linear", bits),
        }
        for n, network in enumerate(self.networks):
            arrays.update(network.arrays(_network_prefix(n), bits))
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
            networks: list[Head] = []
            while f"{_network_prefix(len(networks))}_b1" in arrays:
                networks.append(Head.from_arrays(_network_prefix(len(networks)), arrays))
            temperatures = [float(t) for t in arrays["temperatures"]]
            if len(temperatures) == 3 and not networks:  # a regression alone, saved as 3
                temperatures = [temperatures[0], temperatures[2]]
            if len(temperatures) != len(networks) + 2:
                raise ValueError(f"{len(temperatures)} temperatures for {len(networks) + 1} heads")
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise ModelNotAvailable(
                f"cannot load tfidf model from {directory}: {exc}",
                classifier="tfidf",
                reason="bad_artifacts",
            ) from exc
        model = cls(labels, features, linear, config, networks, temperatures)
        model.metrics = manifest.get("metrics", {})
        return model
