"""``python -m llm_router``: the ``llm-router`` command (:mod:`llm_router.cli`)."""

import sys

from llm_router.cli import main

if __name__ == "__main__":
    sys.exit(main())
