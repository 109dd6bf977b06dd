"""The corpus job: ``classify_file`` and ``llm-router classify``.

:mod:`.job` reads the input, skips what OUTPUT already holds and classifies the rest;
:mod:`.sink` writes OUTPUT in whole rows; :mod:`.ray_engine` runs the same job on Ray Data.
"""

from llm_router.corpus.job import classify_file
from llm_router.corpus.tally import CorpusSummary

__all__ = ["CorpusSummary", "classify_file"]
