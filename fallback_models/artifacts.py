"""Model directories: a JSON manifest with sha256s, verified before anything is loaded.

Layout: ``<LLM_ROUTER_MODEL_DIR>/<kind>/manifest.json`` plus the files it lists. Weights are
``.npz``/JSON (TF-IDF) or safetensors (BERT); a directory holding any file the manifest does
not list (a planted pickle, say), missing a listed file, or with a changed byte is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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


@contextmanager
def staged_directory(directory: Path) -> Iterator[Path]:
    """A fresh sibling folder to write a model into. When the block ends without an error it
    takes the place of ``directory`` by renames (the old model is removed only then); when
    it does not (Ctrl-C, a crash, an error) it is removed and ``directory`` is as it was."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f".{directory.name}.new-{secrets.token_hex(4)}")
    staging.mkdir()  # with the umask's permissions, as the folder it replaces
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = directory.with_name(f".{directory.name}.old-{staging.name.rsplit('-', 1)[-1]}")
    if directory.exists():
        os.replace(directory, retired)
    os.replace(staging, directory)
    shutil.rmtree(retired, ignore_errors=True)


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


def quality(manifest: dict[str, Any]) -> tuple[float, tuple[str, str]]:
    """A manifest's measured test top-1, and the split it was measured on (data, test ids).

    Raises:
        KeyError, TypeError, ValueError: the manifest lacks them.
    """
    split = manifest["split"]
    ids = hashlib.sha256("\n".join(sorted(split["test_ids"])).encode()).hexdigest()
    return float(manifest["metrics"]["top1"]), (str(manifest["data"]["sha256"]), ids)


def order_by_quality(
    model_dir: Path,
    kinds: Iterable[str],
    measured: dict[str, tuple[float, tuple[str, str]]] | None = None,
) -> tuple[str, ...]:
    """``kinds`` reordered so that a model whose manifest shows a lower test top-1 never goes
    before another installed one evaluated on the same split (same data and test ids).

    ``measured`` gives the quality of kinds without a directory of their own (an ensemble).
    Kinds without a trained model, or not comparable, keep their given order (a stable sort).
    """
    kinds = tuple(kinds)
    scores: dict[str, float] = {}
    splits = set()
    for kind in kinds:
        try:
            if measured is not None and kind in measured:
                top1, split = measured[kind]
            else:
                top1, split = quality(read_manifest(model_dir / kind, kind))
        except (ModelNotAvailable, KeyError, TypeError, ValueError):
            continue
        scores[kind] = top1
        splits.add(split)
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
