"""Model directories: a JSON manifest with sha256s, verified before anything is loaded.

Layout: ``<LLM_ROUTER_MODEL_DIR>/<kind>/manifest.json`` plus the files it lists. Weights are
``.npz``/JSON (TF-IDF) or safetensors (BERT); a directory holding any file the manifest does
not list (a planted pickle, say), missing a listed file, or with a changed byte is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llm_router.errors import ModelNotAvailable
from llm_router.labels import LabelSet

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions(*names: str) -> dict[str, str]:
    """Installed versions of the given distributions, plus Python's."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def clear_directory(directory: Path) -> None:
    """Create ``directory``, or empty it of files before a model is saved there."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.iterdir():
        if stale.is_file():
            stale.unlink()


def write_manifest(directory: Path, kind: str, labels: LabelSet, **fields: Any) -> dict[str, Any]:
    """Write ``manifest.json`` listing the sha256 of every other file in ``directory``."""
    files = {
        str(path.relative_to(directory)): sha256_file(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "label_set": labels.to_dict(),
        **fields,
        "files": files,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


def read_manifest(directory: Path, kind: str | None = None) -> dict[str, Any]:
    """Parse a manifest without checking the files (cheap: for label sets and test ids).

    Raises:
        ModelNotAvailable: no manifest (reason ``missing_artifacts``) or an unreadable one.
    """
    name = kind or directory.name
    path = directory / MANIFEST
    if not path.is_file():
        raise ModelNotAvailable(
            f"no trained {name} model in {directory.resolve()}: train one with 'python -m "
            f"fallback_models train {name} --data PATH', or set LLM_ROUTER_MODEL_DIR to the "
            f"folder that holds {name}/",
            classifier=name,
            reason="missing_artifacts",
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelNotAvailable(
            f"unreadable manifest {path}: {exc}", classifier=name, reason="bad_artifacts"
        ) from exc
    if not isinstance(manifest, dict) or (kind is not None and manifest.get("kind") != kind):
        raise ModelNotAvailable(
            f"{path} is not a {name} manifest", classifier=name, reason="bad_artifacts"
        )
    return manifest


def verify_artifacts(directory: Path, kind: str) -> dict[str, Any]:
    """Read the manifest and check every file against it before anything is loaded.

    Raises:
        ModelNotAvailable: missing manifest, a listed file missing or changed, or a file the
            manifest does not list (reason ``tampered_artifacts``).
    """
    manifest = read_manifest(directory, kind)
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed:
        raise ModelNotAvailable(
            f"{directory / MANIFEST} lists no files", classifier=kind, reason="bad_artifacts"
        )
    present = {
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.is_file() and p.name != MANIFEST
    }
    problems = [f"missing {name}" for name in sorted(set(listed) - present)]
    problems += [f"unexpected file {name}" for name in sorted(present - set(listed))]
    for name in sorted(set(listed) & present):
        if sha256_file(directory / name) != listed[name]:
            problems.append(f"{name} changed (sha256 mismatch)")
    if problems:
        raise ModelNotAvailable(
            f"refusing {kind} model at {directory}: {'; '.join(problems)}",
            classifier=kind,
            reason="tampered_artifacts",
        )
    return manifest


def deployed_label_set(model_dir: Path, kinds: Iterable[str]) -> LabelSet:
    """The label set of the first trained model of ``kinds`` found, else the full arXiv
    taxonomy."""
    for kind in kinds:
        try:
            manifest = read_manifest(model_dir / kind, kind)
            return LabelSet.from_dict(manifest["label_set"])
        except ModelNotAvailable:
            continue
        except (KeyError, ValueError) as exc:
            logger.warning("ignoring the label set of %s: %s", model_dir / kind, exc)
    return LabelSet.full_taxonomy()


def order_by_quality(model_dir: Path, kinds: Iterable[str]) -> tuple[str, ...]:
    """``kinds`` reordered so that a model whose manifest shows a lower test top-1 never goes
    before another installed one evaluated on the same split (same data and test ids).

    Kinds without a trained model, or not comparable, keep their given order (a stable sort).
    """
    kinds = tuple(kinds)
    scores: dict[str, float] = {}
    splits = set()
    for kind in kinds:
        try:
            manifest = read_manifest(model_dir / kind, kind)
            top1 = float(manifest["metrics"]["top1"])
            split = manifest["split"]
            ids = hashlib.sha256("\n".join(sorted(split["test_ids"])).encode()).hexdigest()
            splits.add((manifest["data"]["sha256"], ids))
        except (ModelNotAvailable, KeyError, TypeError, ValueError):
            continue
        scores[kind] = top1
    if len(scores) < 2 or len(splits) != 1:
        return kinds
    best_first = sorted(scores, key=lambda k: -scores[k])
    ranked = iter(best_first)
    return tuple(next(ranked) if kind in scores else kind for kind in kinds)


def test_ids(model_dir: Path, kinds: Iterable[str]) -> dict[str, set[str]]:
    """Held-out ids per trained model kind (rows that model was not trained on)."""
    found: dict[str, set[str]] = {}
    for kind in kinds:
        try:
            manifest = read_manifest(model_dir / kind, kind)
        except ModelNotAvailable:
            continue
        found[kind] = set(manifest.get("split", {}).get("test_ids", []))
    return found
