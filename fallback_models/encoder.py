"""The sentence encoder behind the BERT fallback on a CPU, and a disk cache of its vectors.

:class:`Encoder` turns texts into mean-pooled token states of a BERT-family checkpoint (the
way sentence-transformers pools MiniLM), in batches sorted by length so padding stays small.
:class:`OnnxEncoder` computes the same vectors from the graph :meth:`Encoder.export_onnx`
writes, through ONNX Runtime: on a CPU, training, the router, the service and the corpus job
all embed through it when ``onnxruntime`` is installed, and through torch otherwise.

:class:`EmbeddingCache` keeps the vectors of training texts on disk, keyed by the encoder's
fingerprint (its weights and ``max_length``) and each text's sha256: a second training run
with other head settings embeds nothing again, and a changed text or encoder misses. Vectors
are stored as float16 ``.npz`` parts (no pickle), written as they are embedded, so an
interrupted run keeps what it had done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
import weakref
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
ONNX_FILE = "encoder.onnx"


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


def onnx_runtime() -> Any | None:
    """The ``onnxruntime`` module when it is installed, else None."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def length_order(lengths: Sequence[int], size: int) -> Iterator[list[int]]:
    """Positions in batches of ``size`` by increasing length, so padding stays small."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    for start in range(0, len(order), size):
        yield order[start : start + size]


def length_batches(
    tokenizer: Any, lock: threading.Lock, texts: Sequence[str], max_length: int, size: int
) -> Iterator[tuple[list[int], Any]]:
    """``texts`` tokenised in batches of similar length: each batch's positions in ``texts``
    and its tensors. The lock: a fast tokenizer is not thread-safe."""
    for idx in length_order([len(t) for t in texts], size):
        with lock:
            batch = tokenizer(
                [texts[i] for i in idx],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
        yield idx, batch


def fingerprint(path: Path, max_length: int) -> str:
    """What an encoder's vectors depend on: its weights, its config and ``max_length``. Both
    runtimes of one checkpoint share it."""
    digest = hashlib.sha256(f"mean-pool max_length={max_length}\n".encode())
    for name in ("config.json", "model.safetensors"):
        with (path / name).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:32]


def pooled_module(model: Any) -> Any:
    """A torch module: token ids to the mean of the last layer's token states (padding
    excluded). The torch runtime embeds with it and the ONNX graph is exported from it, so
    both compute the same vectors."""
    torch = require_torch()

    class MeanPooled(torch.nn.Module):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            states = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            return (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    return MeanPooled().eval()


class Pooled:
    """What both runtimes share: the fingerprint and batching of :meth:`embed`."""

    path: Path
    max_length: int
    dim: int
    device: str
    runtime: str

    def fingerprint(self) -> str:
        return fingerprint(self.path, self.max_length)

    def embed(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """float32 vectors, shape (len(texts), dim), in the order of ``texts``."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for idx, vectors in self._batches(texts, batch_size):
            out[idx] = vectors
            if progress is not None:
                progress(len(idx))
        return out

    def _batches(self, texts: Sequence[str], size: int) -> Iterator[tuple[list[int], np.ndarray]]:
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        raise NotImplementedError


class Encoder(Pooled):
    """Mean-pooled token states of a BERT-family checkpoint (frozen: inference only), in
    torch: the reference runtime, and the one on a GPU or without ``onnxruntime``."""

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
        self.pooled = pooled_module(self.model)
        self.path = Path(path)
        self.max_length = max_length
        self.device = device
        self.dim = int(self.model.config.hidden_size)
        self.runtime = "torch"
        self._torch = torch
        # A fast tokenizer is not thread-safe ("Already borrowed", huggingface/tokenizers#537).
        self._lock = threading.Lock()

    def _batches(self, texts: Sequence[str], size: int) -> Iterator[tuple[list[int], np.ndarray]]:
        with self._torch.inference_mode():
            for idx, batch in length_batches(
                self.tokenizer, self._lock, texts, self.max_length, size
            ):
                yield idx, self.pooled(**batch.to(self.device)).float().cpu().numpy()

    def save(self, directory: Path) -> None:
        """The checkpoint's weights, config and tokenizer files, as safetensors and JSON."""
        self.model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)

    def export_onnx(self, path: Path) -> None:
        """Write the pooled encoder as an ONNX graph (dynamic batch and length) to ``path``."""
        torch = self._torch
        sample = self.tokenizer(["a text", "a longer text"], padding=True, return_tensors="pt")
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
        axes = {name: {0: "batch", 1: "tokens"} for name in names}
        module = pooled_module(self.model.to("cpu"))
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # the exporter's notes on traced Python branches
            torch.onnx.export(
                module,
                tuple(sample[n] for n in names),
                str(path),
                input_names=names,
                output_names=["vectors"],
                dynamic_axes={**axes, "vectors": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        self.model.to(self.device)

    def for_inference(self) -> Pooled:
        """The faster runtime of the same vectors: on a CPU with ``onnxruntime`` installed, an
        :class:`OnnxEncoder` exported from this one (into a temporary folder that goes with
        it); else this encoder."""
        if self.device != "cpu" or onnx_runtime() is None:
            return self
        folder = Path(tempfile.mkdtemp(prefix="llm-router-encoder-"))
        try:
            self.export_onnx(folder / ONNX_FILE)
            encoder = OnnxEncoder(self.path, folder / ONNX_FILE, max_length=self.max_length)
        except Exception as exc:  # noqa: BLE001 - any export failure leaves the torch runtime
            shutil.rmtree(folder, ignore_errors=True)
            logger.warning("ONNX export failed, the encoder stays in torch: %s", exc)
            return self
        weakref.finalize(encoder, shutil.rmtree, folder, True)
        return encoder


class OnnxEncoder(Pooled):
    """The same vectors as :class:`Encoder`, from its exported ONNX graph through ONNX Runtime
    and the checkpoint's ``tokenizer.json``: no torch import, and about a fifth less time per
    single text on a CPU (BENCHMARKS.md)."""

    runtime = "onnx"

    def __init__(self, path: Path, graph: Path, *, max_length: int) -> None:
        ort = onnx_runtime()
        if ort is None:
            raise ModelNotAvailable(
                "the ONNX encoder needs onnxruntime: pip install -e '.[bert]'",
                classifier="bert",
                reason="missing_dependency",
            )
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
            options = ort.SessionOptions()
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(
                str(graph), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - the runtimes raise their own error types
            raise ModelNotAvailable(
                f"cannot load the ONNX encoder at {graph}: {exc}",
                classifier="bert",
                reason="bad_artifacts",
            ) from exc
        pad = _pad_token(path)
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id(pad) or 0, pad_token=pad)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.dim = int(self.session.get_outputs()[0].shape[-1])
        self.path = Path(path)
        self.graph = Path(graph)
        self.max_length = max_length
        self.device = "cpu"
        self._lock = threading.Lock()

    def _batches(self, texts: Sequence[str], size: int) -> Iterator[tuple[list[int], np.ndarray]]:
        for idx in length_order([len(t) for t in texts], size):
            with self._lock:
                encodings = self.tokenizer.encode_batch([texts[i] for i in idx])
            feed = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
            }
            yield idx, self.session.run(None, {name: feed[name] for name in self.inputs})[0]

    def save(self, directory: Path) -> None:
        """The checkpoint's files as they are (the encoder is frozen) and the ONNX graph."""
        for name in ENCODER_FILES:
            if (self.path / name).is_file():
                shutil.copyfile(self.path / name, directory / name)
        shutil.copyfile(self.graph, directory / ONNX_FILE)


def _pad_token(path: Path) -> str:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            value = json.loads((path / name).read_text()).get("pad_token")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            return value
    return "[PAD]"


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
        encoder: Pooled,
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
