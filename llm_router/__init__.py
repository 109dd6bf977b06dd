"""llm-router: assign arXiv primary categories to abstracts, LLM first, local models second.

>>> from llm_router import route
>>> c = route(abstract)          # doctest: +SKIP
>>> c.label, c.source, c.cached  # doctest: +SKIP
('cs.CV', 'llm', False)
"""

import typing as _typing

from llm_router.errors import (
    AllClassifiersFailed,
    ClassifierError,
    ConfigError,
    LLMResponseInvalid,
    LLMUnavailable,
    ModelNotAvailable,
    RouterError,
)
from llm_router.router import Router, aroute, route
from llm_router.schemas import Candidate, Classification, Usage
from llm_router.settings import Settings

__all__ = [
    "AllClassifiersFailed",
    "Candidate",
    "Classification",
    "ClassifierError",
    "CorpusSummary",
    "ConfigError",
    "LLMResponseInvalid",
    "LLMUnavailable",
    "ModelNotAvailable",
    "Router",
    "RouterError",
    "Settings",
    "Usage",
    "aroute",
    "classify_file",
    "route",
]

if _typing.TYPE_CHECKING:
    from llm_router.corpus import CorpusSummary, classify_file

# The corpus job is a surface: loaded on first use, so `import llm_router` stays light.
_LAZY = ("CorpusSummary", "classify_file")


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import llm_router.corpus

        return getattr(llm_router.corpus, name)
    raise AttributeError(f"module 'llm_router' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
