"""llm-router: assign arXiv primary categories to abstracts, LLM first, local models second.

>>> from llm_router import route
>>> c = route(abstract)          # doctest: +SKIP
>>> c.label, c.source, c.cached  # doctest: +SKIP
('cs.CV', 'llm', False)
"""

from llm_router.corpus import CorpusSummary, classify_file
from llm_router.errors import (
    AllClassifiersFailed,
    BudgetExceeded,
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
    "BudgetExceeded",
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
