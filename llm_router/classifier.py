"""The Classifier protocol every link of the fallback chain implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from llm_router.schemas import Classification


@runtime_checkable
class Classifier(Protocol):
    """Anything with a ``name`` that turns a validated text into a :class:`Classification`.

    ``classify`` raises :class:`~llm_router.errors.ClassifierError` (with a short ``reason``)
    when it cannot answer; the router then tries the next classifier.
    """

    name: str

    def classify(self, text: str) -> Classification: ...
