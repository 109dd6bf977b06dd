"""Projected requests, tokens and cost of a run, before anything is sent."""

from __future__ import annotations

import json
import logging
import math
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from llm_router.labels import LabelSet
from llm_router.prompts import load_prompt
from llm_router.settings import Settings

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4.0  # a rough average for English prose with LaTeX; no tokenizer offline
COMPLETION_TOKENS = 12  # {"label": "astro-ph.CO"} and its framing


def fetch_price_per_mtok(settings: Settings, timeout_s: float = 5.0) -> float | None:
    """The model's prompt price in USD per million tokens from the endpoint's model list
    (OpenRouter publishes it); ``None`` when it is unreachable or has no price."""
    request = urllib.request.Request(f"{settings.endpoint}/models", method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            listing = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        logger.info("no price list from %s: %s", settings.endpoint, exc)
        return None
    for model in listing.get("data", []) if isinstance(listing, dict) else []:
        if isinstance(model, dict) and model.get("id") == settings.model:
            pricing = model.get("pricing") or {}
            try:
                price = float(pricing["prompt"]) * 1e6
            except (KeyError, TypeError, ValueError):
                return None  # e.g. a llama.cpp server lists the model without a price
            return price if math.isfinite(price) and price >= 0 else None
    return None


def estimate(
    texts: Sequence[str],
    settings: Settings,
    labels: LabelSet,
    llm_systems: int,
    price_per_mtok: float | None,
) -> dict[str, Any]:
    """Requests, tokens and cost if every LLM answer were a cache miss and valid at once."""
    prompt = load_prompt(settings.prompt, settings.prompts_dir)
    system_chars = len(prompt.system(labels))
    prompt_tokens = sum(
        int((system_chars + len(prompt.user(t[: settings.max_input_chars]))) / CHARS_PER_TOKEN)
        for t in texts
    )
    # The router repeats the LLM-alone system's questions; with the cache on they are hits.
    passes = 1 if settings.cache and llm_systems else llm_systems
    tokens = passes * (prompt_tokens + COMPLETION_TOKENS * len(texts))
    return {
        "rows": len(texts),
        "requests": passes * len(texts),
        "prompt_tokens_per_request": round(prompt_tokens / max(1, len(texts))),
        "tokens": tokens,
        "price_per_mtok": price_per_mtok,
        "cost_usd": None if price_per_mtok is None else round(tokens * price_per_mtok / 1e6, 6),
        "note": f"tokens approximated as characters / {CHARS_PER_TOKEN:g}",
    }
