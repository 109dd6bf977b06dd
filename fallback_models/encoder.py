"""The sentence encoder behind the BERT fallback on a CPU, and a disk cache of its vectors.

:class:`Encoder` turns texts into the mean of a BERT-family checkpoint's last token states
(the way sentence-transformers pools MiniLM), in batches sorted by length so padding stays
small. Training, the router, the service and the corpus job all embed through it.

:class:`EmbeddingCache` keeps the vectors of training texts on disk, keyed by the encoder's
fingerprint (its weights, its ``max_length``) and each text's sha256: a second training run
with other head settings embeds nothing again, and a changed text or encoder misses. Vectors
are stored as float16 ``.npz`` parts (no pickle), written as they are embedded, so an
interrupted run keeps what it had done.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm_router.errors import ModelNotAvailable

logger = logging.getLogger(__name__)

ENCODER_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def require_torch() -> Any:
    """torch, with transformers importable too; a one-line ModelNotAvailable otherwise."""
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
    """``requested``, else ``cuda`` when torch sees a GPU, else ``cpu``.

    Raises:
        ModelNotAvailable: ``cuda`` requested on a machine where torch sees no GPU.
    """
    torch = require_torch()
    if requested and requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelNotAvailable(
            f"LLM_ROUTER_DEVICE={requested}, but torch sees no CUDA device here",
            classifier="bert",
            reason="missing_device",
        )
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def length_batches(
    tokenizer: Any, lock: threading.Lock, texts: Sequence[str], max_length: int, size: int
) -> Iterator[tuple[list[int], Any]]:
    """``texts`` tokenised in batches of similar length (padding stays small): each batch's
    positions in ``texts`` and its tensors. The lock: a fast tokenizer is not thread-safe."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), size):
        idx = order[start : start + size]
        with lock:
            batch = tokenizer(
                [texts[i] for i in idx],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
        yield idx, batch


class Encoder:
    """Mean-pooled token states of a BERT-family checkpoint (frozen: inference only)."""

    def __init__(self, path: Path, *, max_length: int, device: str = "cpu") -> None:
        torch = require_torch()
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise ModelNotAvailable(
                f"cannot load the encoder at {path}: {exc}",
                classifier="bert",
                reason="missing_base_model",
            ) from exc
        self.model.to(device).eval()
        self.path = Path(path)
        self.max_length = max_length
        self.device = device
        self.dim = int(self.model.config.hidden_size)
        self._torch = torch
        # A fast tokenizer is not thread-safe ("Already borrowed", huggingface/tokenizers#537).
        self._lock = threading.Lock()

    def fingerprint(self) -> str:
        """What the vectors depend on: the weights, the config and ``max_length``."""
        digest = hashlib.sha256(f"mean-pool max_length={self.max_length}\n".encode())
        for name in ("config.json", "model.safetensors"):
            with (self.path / name).open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()[:32]

    def embed(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """float32 vectors, shape (len(texts), dim), in the order of ``texts``."""
        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for idx, batch in length_batches(
                self.tokenizer, self._lock, texts, self.max_length, batch_size
            ):
                batch = batch.to(self.device)
                states = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
                pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[idx] = pooled.float().cpu().numpy()
                if progress is not None:
                    progress(len(idx))
        return out

    def save(self, directory: Path) -> None:
        """The checkpoint's weights, config and tokenizer files, as safetensors and JSON."""
        self.model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)


class EmbeddingCache:
    """Vectors of one encoder on disk: ``<root>/<fingerprint>/part-*.npz``."""

    PART_ROWS = 4096

    def __init__(self, root: Path, fingerprint: str) -> None:
        self.directory = root / fingerprint
        self._index: dict[bytes, np.ndarray] | None = None

    def _load(self) -> dict[bytes, np.ndarray]:
        if self._index is None:
            self._index = {}
            for part in sorted(self.directory.glob("part-*.npz")):
                try:
                    with np.load(part, allow_pickle=False) as data:
                        keys, vectors = data["keys"], data["vectors"]
                except (OSError, ValueError, KeyError) as exc:
                    logger.warning("skipping an unreadable embedding cache part %s: %s", part, exc)
                    continue
                for key, vector in zip(keys, vectors, strict=True):
                    self._index[key.tobytes()] = vector
        return self._index

    def __len__(self) -> int:
        return len(self._load())

    def embed(
        self,
        encoder: Encoder,
        texts: Sequence[str],
        progress: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, int]:
        """Vectors of ``texts`` (float32), embedding only those not cached; returns them and
        how many were embedded now."""
        index = self._load()
        keys = [text_key(t) for t in texts]
        missing = [i for i, k in enumerate(keys) if k not in index]
        if progress is not None and len(missing) < len(texts):
            progress(len(texts) - len(missing))
        for start in range(0, len(missing), self.PART_ROWS):
            chunk = missing[start : start + self.PART_ROWS]
            vectors = encoder.embed([texts[i] for i in chunk], progress=progress)
            self._write([keys[i] for i in chunk], vectors)
            for i, vector in zip(chunk, vectors.astype(np.float16), strict=True):
                index[keys[i]] = vector
        out = np.stack([index[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, 0))
        return out, len(missing)

    def _write(self, keys: list[bytes], vectors: np.ndarray) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"part-{os.getpid()}-{len(list(self.directory.glob('part-*.npz'))):06d}"
        temporary = self.directory / f"{name}.tmp.npz"
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32)
        np.savez(temporary, keys=key_array, vectors=vectors.astype(np.float16))
        os.replace(temporary, self.directory / f"{name}.npz")
