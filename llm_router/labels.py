"""The label space: arXiv codes, their names, and the one mapping of raw codes into it.

A :class:`LabelSet` is the deployed set of labels. Trained models store theirs (labels plus the
raw-code mapping computed from the training data) in their manifest; before any model is
trained, every active arXiv category is a label. Training, the router and the evaluation all
map raw codes with :meth:`LabelSet.to_deployed`, so they answer in the same space.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from llm_router.taxonomy import ALIASES, ARCHIVES, CATEGORIES, SUBSUMED_ARCHIVES

OTHER = "other"
MIN_ROWS = 100

_STRIP_CHARS = " \t\r\n\"'`*.,;:()[]{}<>«»“”‘’"
_DASHES = re.compile(r"\s+[—–-]\s+|:\s+")


def canonical_code(raw: str) -> str:
    """Map an alias or retired archive to its canonical code (``cs.SY`` → ``eess.SY``)."""
    code = raw.strip()
    code = ALIASES.get(code, code)
    return SUBSUMED_ARCHIVES.get(code, code)


def archive_of(code: str) -> str:
    """The archive a code belongs to (``math.GM`` → ``math``, ``gr-qc`` → ``gr-qc``)."""
    if code in CATEGORIES:
        return CATEGORIES[code][1]
    return code.split(".", 1)[0]


def build_label_mapping(raw_labels: Iterable[str], min_rows: int = MIN_ROWS) -> dict[str, str]:
    """Balance labels as the seed analysis did: rare codes → their archive → ``other``.

    Counts are over every row given (the whole data set, before any split). A canonical code
    with fewer than ``min_rows`` rows is replaced by its archive; an archive label that still
    has fewer than ``min_rows`` rows becomes ``other``. Returns canonical code → deployed label.
    """
    counts = Counter(canonical_code(raw) for raw in raw_labels)
    first = {code: code if n >= min_rows else archive_of(code) for code, n in counts.items()}
    merged: Counter[str] = Counter()
    for code, n in counts.items():
        merged[first[code]] += n
    return {code: label if merged[label] >= min_rows else OTHER for code, label in first.items()}


def display_name(label: str) -> str:
    """The human-readable arXiv name of a deployed label."""
    if label == OTHER:
        return "Other (categories too rare to list separately)"
    entry = CATEGORIES.get(label)
    if entry is not None and entry[2]:
        return entry[0]
    if label in ARCHIVES:
        return f"{ARCHIVES[label]} (other areas)"
    if entry is not None:
        return entry[0]
    return label


@dataclass(frozen=True)
class LabelSet:
    """The deployed labels, in a fixed order, with the raw-code mapping that produced them."""

    labels: tuple[str, ...]
    mapping: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("a label set needs at least one label")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        unknown = sorted(set(self.mapping.values()) - set(self.labels))
        if unknown:
            raise ValueError(f"mapping targets missing from the labels: {unknown[:5]}")

    @classmethod
    def full_taxonomy(cls) -> LabelSet:
        """Every active, canonical arXiv category: the label set before any model is trained."""
        codes = sorted(c for c, (_, _, active) in CATEGORIES.items() if active and c not in ALIASES)
        return cls(tuple(codes))

    @classmethod
    def from_raw_labels(cls, raw_labels: Iterable[str], min_rows: int = MIN_ROWS) -> LabelSet:
        """Build the balanced label set of a data set (see :func:`build_label_mapping`)."""
        mapping = build_label_mapping(raw_labels, min_rows)
        return cls(tuple(sorted(set(mapping.values()))), mapping)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> LabelSet:
        """Inverse of :meth:`to_dict` (the form stored in model manifests)."""
        labels = data["labels"]
        mapping = data.get("mapping", {})
        if not isinstance(labels, list) or not isinstance(mapping, dict):
            raise ValueError("a label set needs a 'labels' list and a 'mapping' object")
        return cls(tuple(str(x) for x in labels), {str(k): str(v) for k, v in mapping.items()})

    def to_dict(self) -> dict[str, object]:
        return {"labels": list(self.labels), "mapping": dict(sorted(self.mapping.items()))}

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, label: object) -> bool:
        return label in self._index

    @property
    def _index(self) -> dict[str, int]:
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {label: i for i, label in enumerate(self.labels)}
            object.__setattr__(self, "_index_cache", cached)
        return cached

    def index(self, label: str) -> int:
        return self._index[label]

    @property
    def sha256(self) -> str:
        """Hash of labels and mapping: part of every cache key."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def to_deployed(self, raw: str) -> str | None:
        """Map any raw arXiv code into this set; ``None`` when nothing fits and there is no
        ``other`` label."""
        code = canonical_code(raw)
        if code in self.mapping:
            return self.mapping[code]
        if code in self._index:
            return code
        archive = archive_of(code)
        if archive in self._index:
            return archive
        return OTHER if OTHER in self._index else None

    def names(self) -> list[tuple[str, str]]:
        """``(code, name)`` pairs, in label order, for prompts."""
        return [(label, display_name(label)) for label in self.labels]

    @property
    def _lookup(self) -> dict[str, str]:
        cached = self.__dict__.get("_lookup_cache")
        if cached is None:
            cached = self._build_lookup()
            object.__setattr__(self, "_lookup_cache", cached)
        return cached

    def _build_lookup(self) -> dict[str, str]:
        # Lower-cased code or name -> deployed label. A name shared by two deployed labels
        # is ambiguous and left out, so it can never pick a wrong class.
        candidates: dict[str, set[str]] = {}

        def add(key: str, label: str | None) -> None:
            if label is not None:
                candidates.setdefault(key.strip().lower(), set()).add(label)

        for label in self.labels:
            add(label, label)
            add(display_name(label), label)
        for code, (name, _, _) in CATEGORIES.items():
            deployed = self.to_deployed(code)
            add(code, deployed)
            if deployed is not None and archive_of(code) != deployed:
                add(name, deployed)
        for alias in ALIASES:
            add(alias, self.to_deployed(alias))
        return {key: next(iter(v)) for key, v in candidates.items() if len(v) == 1}

    def parse_answer(self, answer: str) -> str | None:
        """Normalise a model's answer to a deployed label, or ``None`` when it is not one.

        Exact code first, then safe normalisation only: surrounding whitespace, quotes and
        punctuation, letter case, an echoed ``"code — name"`` line, an alias, or an arXiv name.
        Never a substring search: an answer that merely contains a code is invalid.
        """
        if answer in self._index:
            return answer
        text = answer.strip().strip(_STRIP_CHARS)
        if not text or len(text) > 200:
            return None
        found = self._lookup.get(text.lower())
        if found is not None:
            return found
        head = _DASHES.split(text, maxsplit=1)[0].strip(_STRIP_CHARS)
        if head != text:
            return self._lookup.get(head.lower())
        return None
