"""A disk cache of validated LLM answers: JSON values only, never fatal."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import diskcache
from diskcache.core import MODE_RAW

from llm_router.schemas import Classification, Usage

logger = logging.getLogger(__name__)

# A broken, locked, full or read-only cache directory: the cache is bypassed for a while.
_STORE_ERRORS = (sqlite3.Error, OSError, diskcache.Timeout)
# One undecodable or refused entry (corrupt bytes, a pickle, a file reference): dropped.
_ENTRY_ERRORS = (zlib.error, ValueError, TypeError)
_CACHE_ERRORS = _STORE_ERRORS + _ENTRY_ERRORS
# Values are small JSON objects: always kept inside the database, never as separate files.
_NEVER_A_FILE = 1 << 30


class _JSONOnlyDisk(diskcache.JSONDisk):  # type: ignore[misc]
    """diskcache's JSONDisk, accepting only what this cache writes: raw JSON rows.

    diskcache unpickles rows whose mode says so, and reads (then, on delete, removes) the
    file a row names, wherever it points. A writable cache directory must mean neither code
    execution nor reading or deleting files elsewhere, so rows in any mode but raw are
    refused, and no file outside the cache directory is ever removed.
    """

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise ValueError("refusing a pickled cache key")
        return super().get(key, raw)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode != MODE_RAW:
            raise ValueError(f"refusing a cache row stored in mode {mode} (only raw JSON)")
        return super().fetch(mode, filename, value, read)

    def remove(self, file_path: str) -> None:
        root = Path(self._directory).resolve()
        target = (root / file_path).resolve()
        if not target.is_relative_to(root) or target == root:
            logger.warning("refusing to remove %s: outside the cache directory", file_path)
            return
        super().remove(file_path)


class DiskCache:
    """A JSON key-value store in a directory, opened lazily, never fatal.

    A failure of the store (locked, full, unreadable) bypasses the cache for a back-off
    period (1 s, doubling up to 60 s), then it is tried again; ``stats`` counts the writes
    that were skipped meanwhile.
    """

    def __init__(self, directory: Path, *, timeout_s: float = 2.0) -> None:
        self.directory = Path(directory)
        self.timeout_s = timeout_s
        self.stats = {"hits": 0, "misses": 0, "writes": 0, "bypassed_writes": 0}
        self._cache: diskcache.Cache | None = None
        self._retry_at = 0.0
        self._backoff_s = 0.0
        self._warned = False
        self._lock = threading.Lock()

    def _available(self) -> diskcache.Cache | None:
        """The open cache, or ``None`` while backing off after a failure."""
        if time.monotonic() < self._retry_at:
            return None
        if self._cache is not None:
            return self._cache
        with self._lock:
            if self._cache is None and time.monotonic() >= self._retry_at:
                try:
                    self._cache = diskcache.Cache(
                        str(self.directory),
                        disk=_JSONOnlyDisk,
                        timeout=self.timeout_s,
                        disk_min_file_size=_NEVER_A_FILE,
                    )
                except _CACHE_ERRORS as exc:
                    self._fail("open", exc, store=True)
        return self._cache

    def _fail(self, action: str, exc: BaseException, *, store: bool) -> None:
        if store:  # back off, then try again
            self._backoff_s = min(60.0, max(1.0, self._backoff_s * 2))
            self._retry_at = time.monotonic() + self._backoff_s
        if not self._warned:
            self._warned = True
            logger.warning(
                "disk cache at %s failed to %s (%s: %s); %s",
                self.directory,
                action,
                type(exc).__name__,
                exc,
                "cache bypassed for now, retried later" if store else "entry ignored",
            )

    def _ok(self) -> None:
        self._backoff_s = 0.0

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored JSON object, or ``None`` on a miss or any failure."""
        cache = self._available()
        if cache is None:
            return None
        try:
            value = cache.get(key)
        except _CACHE_ERRORS as exc:
            broken = isinstance(exc, _STORE_ERRORS)
            self._fail("read", exc, store=broken)
            if not broken:
                self.delete(key)
            return None
        self._ok()
        found = value if isinstance(value, dict) else None
        self.stats["hits" if found is not None else "misses"] += 1
        return found

    def set(self, key: str, value: dict[str, Any]) -> None:
        cache = self._available()
        if cache is None:
            self.stats["bypassed_writes"] += 1
            return
        try:
            cache.set(key, value)
        except _CACHE_ERRORS as exc:
            self.stats["bypassed_writes"] += 1
            self._fail("write", exc, store=isinstance(exc, _STORE_ERRORS))
            return
        self._ok()
        self.stats["writes"] += 1

    def delete(self, key: str) -> None:
        cache = self._cache
        if cache is None:
            return
        try:
            cache.delete(key)
        except _CACHE_ERRORS as exc:
            self._fail("delete", exc, store=isinstance(exc, _STORE_ERRORS))

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()


class KeyedClassifier(Protocol):
    """A classifier that can name a cache key for a text (the LLM classifier)."""

    name: str

    def cache_key(self, text: str, *, shortlist: Sequence[str] | None = None) -> str: ...

    def classify(self, text: str, *, shortlist: Sequence[str] | None = None) -> Classification: ...


class CachedClassifier:
    """Wraps a classifier with a disk cache; only validated answers are stored."""

    def __init__(self, inner: KeyedClassifier, cache: DiskCache, labels: frozenset[str]) -> None:
        self.inner = inner
        self.cache = cache
        self.labels = labels
        self.name = inner.name

    def classify(self, text: str, *, shortlist: Sequence[str] | None = None) -> Classification:
        started = time.perf_counter()
        key = self.inner.cache_key(text, shortlist=shortlist)
        stored = self.cache.get(key)
        if stored is not None:
            hit = self._validate(stored)
            if hit is not None:
                return hit.model_copy(
                    update={
                        "cached": True,
                        "latency_ms": (time.perf_counter() - started) * 1000,
                        "usage": Usage(),  # a cached answer costs nothing
                        "fallback_reason": None,
                    }
                )
            self.cache.delete(key)
        result = self.inner.classify(text, shortlist=shortlist)
        self.cache.set(key, result.model_dump(mode="json"))
        return result

    def close(self) -> None:
        self.cache.close()
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()

    def _validate(self, stored: dict[str, Any]) -> Classification | None:
        try:
            hit = Classification.model_validate(stored)
        except ValueError:
            logger.warning("ignoring a malformed cache entry")
            return None
        if hit.label not in self.labels:
            logger.warning("ignoring a cache entry whose label is not in the label set")
            return None
        return hit
