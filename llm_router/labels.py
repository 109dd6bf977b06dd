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

from llm_router.taxonomy import (
    ALIASES,
    ARCHIVES,
    CATEGORIES,
    SUBSUMED_ARCHIVES,
    group_of_archive,
)

OTHER = "other"
MIN_ROWS = 100

_STRIP_CHARS = " \t\r\n\"'`*.,;:()[]{}<>«»“”‘’"
_DASHES = re.compile(r"\s+[—–-]\s+|:\s+")
# Dotted or hyphenated arXiv codes inside free text (cs.CV, math-ph, hep-th); plain archive
# words such as "physics" are left alone, as they also occur in category names.
_CODE = re.compile(r"\b[a-z]+(?:-[a-z]+)?\.[A-Za-z-]+\b|\b[a-z]+-[a-z]+\b")


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


def group_of(label: str) -> str | None:
    """The arXiv group of a deployed label (``Computer Science``, ``Physics``, ...); None for
    ``other`` and for codes arXiv does not know."""
    entry = CATEGORIES.get(label)
    if entry is not None:
        return group_of_archive(entry[1])
    if label in ARCHIVES:
        return group_of_archive(label)
    return None


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

    def _answer_target(self, raw: str) -> str | None:
        """The label an answer naming the code ``raw`` stands for, or ``None``.

        Unlike :meth:`to_deployed` (which must place every row of a data set), an answer is
        only taken when it names a category precisely: an archive or group code that is not
        itself a label (``astro-ph``, ``cond-mat``) is too coarse, and is never read as the
        catch-all ``other``.
        """
        code = canonical_code(raw)
        if code in self._index:
            return code
        if code in ARCHIVES:  # e.g. old papers filed under plain "astro-ph"
            return None
        if code in self.mapping:
            return self.mapping[code]
        if code not in CATEGORIES:
            return None
        archive = archive_of(code)
        return archive if archive in self._index else None

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
            target = self._answer_target(code)
            add(code, target)
            if target is not None and archive_of(code) != target:
                add(name, target)
        for alias in ALIASES:
            add(alias, self._answer_target(alias))
        return {key: next(iter(v)) for key, v in candidates.items() if len(v) == 1}

    def archive_hint(self, answer: str) -> str | None:
        """For an answer that names a whole archive (``astro-ph``, ``Astrophysics``): one line
        listing the labels of that archive, to send with the corrective re-ask."""
        wanted = answer.strip().strip(_STRIP_CHARS).lower()
        for archive, name in ARCHIVES.items():
            if wanted in (archive.lower(), name.lower()):
                codes = [label for label in self.labels if archive_of(label) == archive]
                if codes and archive not in self._index:
                    return f"{archive} is an archive, not a category: choose one of " + ", ".join(
                        codes
                    )
        return None

    def parse_answer(self, answer: str) -> str | None:
        """Normalise a model's answer to a deployed label, or ``None`` when it is not one.

        Exact code first, then safe normalisation only: surrounding whitespace, quotes and
        punctuation, letter case, an echoed ``"code — name"`` line, an alias, or an arXiv name.
        Never a substring search: an answer that merely contains a code is invalid, and so is
        one that names two different codes, or an archive that is not itself a label.
        """
        if answer in self._index:
            return answer
        text = answer.strip().strip(_STRIP_CHARS)
        if not text or len(text) > 200:
            return None
        found = self._lookup.get(text.lower())
        if found is not None:
            return found
        parts = _DASHES.split(text, maxsplit=1)
        head = parts[0].strip(_STRIP_CHARS)
        if head == text:
            return None
        found = self._lookup.get(head.lower())
        if found is None or len(parts) < 2:
            return found
        # "code — name" is an echo; a second, different code makes the answer ambiguous.
        others = {canonical_code(c) for c in _CODE.findall(parts[1])} - {canonical_code(head)}
        return None if any(c in CATEGORIES or c in ALIASES for c in others) else found
