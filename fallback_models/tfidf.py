"""TfidfClassifier: TF-IDF features, a linear SVM and a one-hidden-layer network, averaged.

Both heads read the same word 1-2-gram TF-IDF vector (title + abstract). Each head's scores
are calibrated with a softmax temperature fitted on a held-out slice of the training rows,
and the two probability vectors are averaged. The network is trained with torch when it is
installed (otherwise the SVM alone is used); inference is plain numpy/scipy.

Stored as ``vocab.json`` (terms in column order), ``weights.npz`` (idf, weights, biases,
temperatures) and ``config.json``: plain arrays and JSON, never pickle.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.svm import LinearSVC

from fallback_models.artifacts import clear_directory, verify_artifacts, write_manifest
from fallback_models.topk import TOP_K, classifications
from llm_router.errors import ModelNotAvailable
from llm_router.labels import LabelSet
from llm_router.schemas import Classification

logger = logging.getLogger(__name__)

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
    c: float = 0.5
    mlp_hidden: int = 256  # 0: SVM only
    mlp_epochs: int = 4
    mlp_batch_size: int = 256
    mlp_learning_rate: float = 2e-3
    mlp_dropout: float = 0.3
    svm_weight: float = 0.5  # share of the SVM in the averaged probabilities
    calibration_fraction: float = 0.03  # two temperatures need few rows; the rest trains
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


@dataclass
class MLPHead:
    """relu(x @ w1 + b1) @ w2 + b2, trained on the sparse TF-IDF vectors."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    def logits(self, x: sp.csr_matrix) -> np.ndarray:
        hidden = np.maximum(np.asarray(x @ self.w1) + self.b1, 0.0)
        return np.asarray(hidden @ self.w2 + self.b2)


def _train_mlp(
    x: sp.csr_matrix, y: np.ndarray, n_labels: int, config: TfidfConfig, say: Callable[[str], None]
) -> MLPHead | None:
    """Train the network with torch (sparse embedding-bag input layer); None without torch."""
    try:
        import torch
    except ImportError:
        logger.warning("torch is not installed: the tfidf model uses its SVM head only")
        return None
    torch.manual_seed(config.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads - 1))  # leave a core to the SVM fitting meanwhile
    try:
        return _train_mlp_torch(torch, x, y, n_labels, config, say)
    finally:
        torch.set_num_threads(threads)


def _train_mlp_torch(
    torch: Any,
    x: sp.csr_matrix,
    y: np.ndarray,
    n_labels: int,
    config: TfidfConfig,
    say: Callable[[str], None],
) -> MLPHead:
    rng = np.random.default_rng(config.seed)
    n_features = x.shape[1]
    first = torch.nn.EmbeddingBag(n_features, config.mlp_hidden, mode="sum", sparse=True)
    torch.nn.init.normal_(first.weight, std=0.02)
    bias = torch.nn.Parameter(torch.zeros(config.mlp_hidden))
    out = torch.nn.Linear(config.mlp_hidden, n_labels)
    dropout = torch.nn.Dropout(config.mlp_dropout)
    sparse_opt = torch.optim.SparseAdam(list(first.parameters()), lr=config.mlp_learning_rate)
    dense_opt = torch.optim.Adam([bias, *out.parameters()], lr=config.mlp_learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()
    targets = torch.from_numpy(y.astype(np.int64))
    for epoch in range(config.mlp_epochs):
        say(f"training the network, epoch {epoch + 1}/{config.mlp_epochs}")
        order = rng.permutation(x.shape[0])
        for start in range(0, len(order), config.mlp_batch_size):
            rows = order[start : start + config.mlp_batch_size]
            batch = x[rows]
            hidden = first(
                torch.from_numpy(batch.indices.astype(np.int64)),
                torch.from_numpy(batch.indptr[:-1].astype(np.int64)),
                per_sample_weights=torch.from_numpy(batch.data.astype(np.float32)),
            )
            logits = out(dropout(torch.relu(hidden + bias)))
            loss = loss_fn(logits, targets[rows])
            sparse_opt.zero_grad()
            dense_opt.zero_grad()
            loss.backward()
            sparse_opt.step()
            dense_opt.step()
    with torch.no_grad():
        return MLPHead(
            # The first layer is stored as float16: quantise now so saved == trained.
            w1=first.weight.numpy().astype(np.float16).astype(np.float32),
            b1=bias.numpy().astype(np.float32),
            w2=out.weight.numpy().T.astype(np.float32).copy(),
            b2=out.bias.numpy().astype(np.float32),
        )


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
        mlp: MLPHead | None = None,
        mlp_temperature: float = 1.0,
    ) -> None:
        self.labels = labels
        self.vectorizers = vectorizers
        # (n_features, n_labels) float32 in C order: scipy copies any other layout per call.
        self.coef = coef
        self.intercept = intercept
        self.temperature = temperature
        self.config = config
        self.mlp = mlp
        self.mlp_temperature = mlp_temperature
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
        # liblinear releases the GIL: the network trains on the other core meanwhile.
        with ThreadPoolExecutor(max_workers=1) as pool:
            svm_done = pool.submit(svm.fit, x_fit, y[fit_idx])
            mlp = None
            if config.mlp_hidden > 0:
                mlp = _train_mlp(x_fit, y[fit_idx], len(labels), config, say)
            svm_done.result()
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
        model = cls(labels, vectorizers, np.ascontiguousarray(coef), intercept, 1.0, config, mlp)
        if len(cal_idx):
            say(f"calibrating on {len(cal_idx):,} held-out rows")
            x_cal = model.transform([texts[int(i)] for i in cal_idx])
            model.temperature = _fit_temperature(model._svm_scores(x_cal), y[cal_idx])
            if mlp is not None:
                model.mlp_temperature = _fit_temperature(mlp.logits(x_cal), y[cal_idx])
        return model

    # -- inference --------------------------------------------------------------------------
    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        blocks = [
            self.vectorizers[k].transform(texts) for k in _VECTOR_KEYS if k in self.vectorizers
        ]
        return sp.hstack(blocks).tocsr() if len(blocks) > 1 else blocks[0]

    def _svm_scores(self, x: sp.csr_matrix) -> np.ndarray:
        return np.asarray(x @ self.coef + self.intercept)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Calibrated probabilities, shape (len(texts), len(labels)), columns in label order."""
        x = self.transform(texts)
        proba = softmax(self._svm_scores(x) / self.temperature, axis=1)
        if self.mlp is not None:
            weight = self.config.svm_weight
            mlp = softmax(self.mlp.logits(x) / self.mlp_temperature, axis=1)
            proba = weight * proba + (1.0 - weight) * mlp
        return np.asarray(proba)

    def classify_batch(self, texts: Sequence[str], top_k: int = TOP_K) -> list[Classification]:
        started = time.perf_counter()
        proba = self.predict_proba(texts)
        per_text_ms = (time.perf_counter() - started) * 1000 / max(1, len(texts))
        model = "tfidf-svm+mlp" if self.mlp is not None else "tfidf-svm"
        return classifications(
            proba, self.labels, source=self.name, model=model, latency_ms=per_text_ms, top_k=top_k
        )

    def classify(self, text: str) -> Classification:
        return self.classify_batch([text])[0]

    # -- storage ----------------------------------------------------------------------------
    def save(self, directory: Path, **manifest_fields: Any) -> dict[str, Any]:
        """Write the model as JSON + ``.npz`` and a manifest with every file's sha256."""
        clear_directory(directory)
        vocab = {}
        arrays: dict[str, np.ndarray] = {
            "coef": np.ascontiguousarray(self.coef.astype(np.float16)),
            "intercept": self.intercept,
            "temperature": np.array([self.temperature], dtype=np.float64),
        }
        if self.mlp is not None:
            arrays.update(
                mlp_w1=self.mlp.w1.astype(np.float16),
                mlp_b1=self.mlp.b1,
                mlp_w2=self.mlp.w2,
                mlp_b2=self.mlp.b2,
                mlp_temperature=np.array([self.mlp_temperature], dtype=np.float64),
            )
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
            coef = np.ascontiguousarray(arrays["coef"].astype(np.float32))
            mlp = None
            if "mlp_w1" in arrays:
                mlp = MLPHead(
                    arrays["mlp_w1"].astype(np.float32),
                    arrays["mlp_b1"],
                    arrays["mlp_w2"],
                    arrays["mlp_b2"],
                )
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise ModelNotAvailable(
                f"cannot load tfidf model from {directory}: {exc}",
                classifier="tfidf",
                reason="bad_artifacts",
            ) from exc
        model = cls(
            labels,
            vectorizers,
            coef,
            arrays["intercept"],
            float(arrays["temperature"][0]),
            config,
            mlp,
            float(arrays["mlp_temperature"][0]) if mlp is not None else 1.0,
        )
        model.metrics = manifest.get("metrics", {})
        return model
