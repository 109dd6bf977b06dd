"""A disk cache of validated LLM answers: JSON values only, never fatal."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Protocol

import diskcache
from diskcache.core import MODE_PICKLE

from llm_router.schemas import Classification, Usage

logger = logging.getLogger(__name__)

# A broken, locked, full or read-only cache directory: the cache is bypassed from then on.
_STORE_ERRORS = (sqlite3.Error, OSError, diskcache.Timeout)
# One undecodable entry (corrupt bytes, a refused pickle): that entry is dropped.
_ENTRY_ERRORS = (zlib.error, ValueError, TypeError)
_CACHE_ERRORS = _STORE_ERRORS + _ENTRY_ERRORS


class _JSONOnlyDisk(diskcache.JSONDisk):  # type: ignore[misc]
    """diskcache's JSONDisk, refusing any entry marked as pickled.

    diskcache unpickles rows whose mode says so; a writable cache directory must not mean
    code execution, so such rows are rejected instead of loaded.
    """

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise ValueError("refusing a pickled cache key")
        return super().get(key, raw)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == MODE_PICKLE:
            raise ValueError("refusing a pickled cache value")
        return super().fetch(mode, filename, value, read)


class DiskCache:
    """A JSON key-value store in a directory, opened lazily, bypassed after a failure."""

    def __init__(self, directory: Path, *, timeout_s: float = 2.0) -> None:
        self.directory = Path(directory)
        self.timeout_s = timeout_s
        self._cache: diskcache.Cache | None = None
        self._disabled = False
        self._warned = False
        self._lock = threading.Lock()

    def _open(self) -> diskcache.Cache | None:
        if self._cache is not None or self._disabled:
            return self._cache
        with self._lock:
            if self._cache is None and not self._disabled:
                try:
                    self._cache = diskcache.Cache(
                        str(self.directory), disk=_JSONOnlyDisk, timeout=self.timeout_s
                    )
                except _CACHE_ERRORS as exc:
                    self._fail("open", exc, disable=True)
        return self._cache

    def _fail(self, action: str, exc: BaseException, *, disable: bool) -> None:
        if disable:
            self._disabled = True
        if not self._warned:
            self._warned = True
            logger.warning(
                "disk cache at %s failed to %s (%s: %s); %s",
                self.directory,
                action,
                type(exc).__name__,
                exc,
                "cache bypassed" if disable else "entry ignored",
            )

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored JSON object, or ``None`` on a miss or any failure."""
        if self._disabled:
            return None
        cache = self._open()
        if cache is None:
            return None
        try:
            value = cache.get(key)
        except _CACHE_ERRORS as exc:
            broken = isinstance(exc, _STORE_ERRORS)
            self._fail("read", exc, disable=broken)
            if not broken:
                self.delete(key)
            return None
        return value if isinstance(value, dict) else None

    def set(self, key: str, value: dict[str, Any]) -> None:
        if self._disabled:
            return
        cache = self._open()
        if cache is None:
            return
        try:
            cache.set(key, value)
        except _CACHE_ERRORS as exc:
            self._fail("write", exc, disable=isinstance(exc, _STORE_ERRORS))

    def delete(self, key: str) -> None:
        cache = self._cache
        if cache is None:
            return
        try:
            cache.delete(key)
        except _CACHE_ERRORS as exc:
            self._fail("delete", exc, disable=isinstance(exc, _STORE_ERRORS))

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()


class KeyedClassifier(Protocol):
    """A classifier that can name a cache key for a text (the LLM classifier)."""

    name: str

    def cache_key(self, text: str) -> str: ...

    def classify(self, text: str) -> Classification: ...


class CachedClassifier:
    """Wraps a classifier with a disk cache; only validated answers are stored."""

    def __init__(self, inner: KeyedClassifier, cache: DiskCache, labels: frozenset[str]) -> None:
        self.inner = inner
        self.cache = cache
        self.labels = labels
        self.name = inner.name

    def classify(self, text: str) -> Classification:
        started = time.perf_counter()
        key = self.inner.cache_key(text)
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
        result = self.inner.classify(text)
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
