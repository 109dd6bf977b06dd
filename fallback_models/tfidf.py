"""TfidfClassifier: word + character TF-IDF and a linear SVM, calibrated by temperature.

Stored as ``vocab.json`` (terms in column order), ``weights.npz`` (idf vectors, weights,
intercepts, temperature) and ``config.json``: plain arrays and JSON, never pickle.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.svm import LinearSVC

from fallback_models.artifacts import verify_artifacts, write_manifest
from llm_router.errors import ModelNotAvailable
from llm_router.labels import LabelSet
from llm_router.schemas import Candidate, Classification

logger = logging.getLogger(__name__)

TOP_K = 5
_VECTOR_KEYS = ("word", "char")


@dataclass(frozen=True)
class TfidfConfig:
    """Hyper-parameters; the defaults were chosen on the shared arXiv data (BENCHMARKS.md)."""

    word_ngram_max: int = 2
    word_max_features: int = 300_000
    char_ngram_min: int = 2
    char_ngram_max: int = 5
    char_max_features: int = 0  # 0: no character n-grams
    min_df: int = 2
    c: float = 0.3
    calibration_fraction: float = 0.1
    seed: int = 42


def _vectorizer_params(config: TfidfConfig, kind: str) -> dict[str, Any]:
    common = {"sublinear_tf": True, "min_df": config.min_df, "dtype": np.float32}
    if kind == "word":
        return {
            **common,
            "analyzer": "word",
            "ngram_range": (1, config.word_ngram_max),
            "strip_accents": "unicode",
            "max_features": config.word_max_features,
        }
    return {
        **common,
        "analyzer": "char_wb",
        "ngram_range": (config.char_ngram_min, config.char_ngram_max),
        "max_features": config.char_max_features,
    }


def _fit_temperature(scores: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature that minimises the log loss of held-out decision scores."""

    def nll(log_t: float) -> float:
        logp = log_softmax(scores / np.exp(log_t), axis=1)
        return float(-logp[np.arange(len(y)), y].mean())

    result = minimize_scalar(nll, bounds=(np.log(1e-3), np.log(10.0)), method="bounded")
    return float(np.exp(result.x))


class TfidfClassifier:
    """The fast local fallback: calibrated top-k probabilities over the deployed labels."""

    name = "tfidf"

    def __init__(
        self,
        labels: LabelSet,
        vectorizers: dict[str, TfidfVectorizer],
        coef: np.ndarray,
        intercept: np.ndarray,
        temperature: float,
        config: TfidfConfig,
    ) -> None:
        self.labels = labels
        self.vectorizers = vectorizers
        self.coef = coef  # (n_features, n_labels), float32, column-major for X @ coef
        self.intercept = intercept
        self.temperature = temperature
        self.config = config
        self.metrics: dict[str, Any] = {}

    # -- training ---------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        texts: Sequence[str],
        targets: Sequence[str],
        labels: LabelSet,
        config: TfidfConfig | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> TfidfClassifier:
        """Fit on ``texts`` with deployed-label ``targets``; a slice calibrates the scores."""
        config = config or TfidfConfig()
        say = progress or (lambda _msg: None)
        y = np.array([labels.index(t) for t in targets])
        rng = np.random.default_rng(config.seed)
        calib = rng.random(len(y)) < config.calibration_fraction
        fit_idx, cal_idx = np.flatnonzero(~calib), np.flatnonzero(calib)
        fit_texts = [texts[int(i)] for i in fit_idx]

        vectorizers: dict[str, TfidfVectorizer] = {}
        blocks = []
        for kind in _VECTOR_KEYS:
            if kind == "char" and not config.char_max_features:
                continue
            say(f"vectorising ({kind} n-grams)")
            vec = TfidfVectorizer(**_vectorizer_params(config, kind))
            blocks.append(vec.fit_transform(fit_texts))
            vectorizers[kind] = vec
        x_fit = sp.hstack(blocks).tocsr() if len(blocks) > 1 else blocks[0].tocsr()

        say(f"fitting a linear SVM on {x_fit.shape[0]:,} rows x {x_fit.shape[1]:,} features")
        svm = LinearSVC(C=config.c, dual="auto", random_state=config.seed)
        svm.fit(x_fit, y[fit_idx])
        coef = np.zeros((x_fit.shape[1], len(labels)), dtype=np.float32)
        intercept = np.full(len(labels), -1e3, dtype=np.float32)  # labels never seen: never win
        classes = svm.classes_
        if len(classes) == 2:  # sklearn's binary case: one weight vector for class 1
            coef[:, classes[1]] = svm.coef_[0]
            coef[:, classes[0]] = -svm.coef_[0]
            intercept[classes[1]], intercept[classes[0]] = svm.intercept_[0], -svm.intercept_[0]
        else:
            coef[:, classes] = svm.coef_.T
            intercept[classes] = svm.intercept_
        # Stored as float16: quantise now, so the saved model is exactly the trained one.
        coef = coef.astype(np.float16).astype(np.float32)
        model = cls(labels, vectorizers, np.asfortranarray(coef), intercept, 1.0, config)
        if len(cal_idx):
            say(f"calibrating on {len(cal_idx):,} held-out rows")
            scores = model.decision_scores([texts[int(i)] for i in cal_idx])
            model.temperature = _fit_temperature(scores, y[cal_idx])
        return model

    # -- inference --------------------------------------------------------------------------
    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        blocks = [
            self.vectorizers[k].transform(texts) for k in _VECTOR_KEYS if k in self.vectorizers
        ]
        return sp.hstack(blocks).tocsr() if len(blocks) > 1 else blocks[0]

    def decision_scores(self, texts: Sequence[str]) -> np.ndarray:
        scores: np.ndarray = self.transform(texts) @ self.coef + self.intercept
        return np.asarray(scores)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Calibrated probabilities, shape (len(texts), len(labels)), columns in label order."""
        return np.asarray(softmax(self.decision_scores(texts) / self.temperature, axis=1))

    def classify_batch(self, texts: Sequence[str], top_k: int = TOP_K) -> list[Classification]:
        started = time.perf_counter()
        proba = self.predict_proba(texts)
        per_text_ms = (time.perf_counter() - started) * 1000 / max(1, len(texts))
        k = min(top_k, proba.shape[1])
        top = np.argsort(-proba, axis=1)[:, :k]
        results = []
        for row, idx in zip(proba, top, strict=True):
            candidates = [Candidate(label=self.labels.labels[i], score=float(row[i])) for i in idx]
            results.append(
                Classification(
                    label=candidates[0].label,
                    source=self.name,
                    candidates=candidates,
                    latency_ms=per_text_ms,
                    model="tfidf-linear-svm",
                )
            )
        return results

    def classify(self, text: str) -> Classification:
        return self.classify_batch([text])[0]

    # -- storage ----------------------------------------------------------------------------
    def save(self, directory: Path, **manifest_fields: Any) -> dict[str, Any]:
        """Write the model as JSON + ``.npz`` and a manifest with every file's sha256."""
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.iterdir():
            if stale.is_file():
                stale.unlink()
        vocab = {}
        arrays: dict[str, np.ndarray] = {
            "coef": np.ascontiguousarray(self.coef.astype(np.float16)),
            "intercept": self.intercept,
            "temperature": np.array([self.temperature], dtype=np.float64),
        }
        for kind, vec in self.vectorizers.items():
            terms = [""] * len(vec.vocabulary_)
            for term, col in vec.vocabulary_.items():
                terms[col] = term
            vocab[kind] = terms
            arrays[f"idf_{kind}"] = vec.idf_.astype(np.float32)
        (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        np.savez(directory / "weights.npz", allow_pickle=False, **arrays)
        (directory / "config.json").write_text(json.dumps(asdict(self.config), indent=2))
        return write_manifest(directory, "tfidf", self.labels, **manifest_fields)

    @classmethod
    def load(cls, directory: Path) -> TfidfClassifier:
        """Verify the directory against its manifest, then load it (no pickle involved).

        Raises:
            ModelNotAvailable: missing, incomplete or tampered artifacts.
        """
        manifest = verify_artifacts(directory, "tfidf")
        try:
            labels = LabelSet.from_dict(manifest["label_set"])
            config = TfidfConfig(**json.loads((directory / "config.json").read_text()))
            vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
            with np.load(directory / "weights.npz", allow_pickle=False) as weights:
                arrays = {key: weights[key] for key in weights.files}
            vectorizers = {}
            for kind in _VECTOR_KEYS:
                if kind not in vocab:
                    continue
                params = _vectorizer_params(config, kind)
                params.update(max_features=None, min_df=1)
                vec = TfidfVectorizer(
                    **params, vocabulary={t: i for i, t in enumerate(vocab[kind])}
                )
                vec.idf_ = arrays[f"idf_{kind}"]
                vectorizers[kind] = vec
            coef = np.asfortranarray(arrays["coef"].astype(np.float32))
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise ModelNotAvailable(
                f"cannot load tfidf model from {directory}: {exc}",
                classifier="tfidf",
                reason="bad_artifacts",
            ) from exc
        model = cls(
            labels, vectorizers, coef, arrays["intercept"], float(arrays["temperature"][0]), config
        )
        model.metrics = manifest.get("metrics", {})
        return model
