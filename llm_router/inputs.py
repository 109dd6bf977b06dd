"""Input validation: what the router accepts, and how a text is cleaned before use."""

from __future__ import annotations

import re
import unicodedata

# C0/C1 controls other than tab and newline, and bidi overrides/isolates: they carry no
# meaning for a label and can hide text from a reader of the prompt.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def prepare_text(text: object, max_chars: int) -> str:
    """Validate and clean one input text; truncate it to ``max_chars`` characters.

    Raises:
        TypeError: ``text`` is not a ``str`` (bytes included: decode them first).
        ValueError: ``text`` is empty or only whitespace/control characters.
    """
    if isinstance(text, bytes | bytearray):
        raise TypeError("text must be str, got bytes: decode it first, e.g. data.decode('utf-8')")
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    # Only the start of a paper decides its label; cutting early keeps a 10 MB input cheap.
    head = text[: max_chars * 2]
    # Lone surrogates cannot be encoded as UTF-8 on the wire: replace them.
    head = head.encode("utf-8", "replace").decode("utf-8")
    cleaned = _UNSAFE.sub(" ", unicodedata.normalize("NFC", head)).strip()
    if not cleaned:
        raise ValueError("text is empty or whitespace only: nothing to classify")
    return cleaned[:max_chars]
