"""Projected requests, tokens and cost of a run, before anything is sent."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from llm_router.labels import LabelSet
from llm_router.llm.budget import Price
from llm_router.llm.redact import redact_url
from llm_router.prompts import load_prompt
from llm_router.settings import Settings

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4.0  # a rough average for English prose with LaTeX; no tokenizer offline
COMPLETION_TOKENS = 12  # {"label": "astro-ph.CO"} and its framing


def parse_price(text: str) -> Price:
    """``--price-per-mtok``: ``P`` (prompt and completion) or ``P,C`` (USD per million)."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) not in (1, 2):
        raise ValueError(f"expected PROMPT or PROMPT,COMPLETION, got {text!r}")
    try:
        prompt = float(parts[0])
        completion = float(parts[-1])
        return Price(prompt, completion)
    except ValueError:
        raise ValueError(f"expected numbers ≥ 0, got {text!r}") from None


def fetch_price(settings: Settings, timeout_s: float = 5.0) -> Price | None:
    """The model's prompt and completion prices (USD per million tokens) from the endpoint's
    model list (OpenRouter publishes them); ``None`` when unreachable or unpriced."""
    request = urllib.request.Request(f"{settings.endpoint}/models", method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            listing = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        logger.info("no price list from %s: %s", redact_url(settings.endpoint), exc)
        return None
    for model in listing.get("data", []) if isinstance(listing, dict) else []:
        if isinstance(model, dict) and model.get("id") == settings.model:
            pricing = model.get("pricing") or {}
            try:
                prompt = float(pricing["prompt"]) * 1e6
                completion = float(pricing.get("completion", pricing["prompt"])) * 1e6
                return Price(prompt, completion)
            except (KeyError, TypeError, ValueError, AttributeError):
                return None  # e.g. a llama.cpp server lists the model without a price
    return None


def estimate(
    texts: Sequence[str],
    settings: Settings,
    labels: LabelSet,
    llm_systems: int,
    price: Price | None,
) -> dict[str, Any]:
    """Requests, tokens and cost if every LLM answer were a cache miss and valid at once,
    every question carrying the full label list (an upper bound for shortlist and cascade).

    ``llm_systems`` counts the distinct requests per row: the router and the LLM alone ask
    the same one when the cache is on."""
    prompt = load_prompt(settings.prompt, settings.prompts_dir)
    system_chars = len(prompt.system(labels))
    prompt_tokens = sum(
        int((system_chars + len(prompt.user(t[: settings.max_input_chars]))) / CHARS_PER_TOKEN)
        for t in texts
    )
    passes = llm_systems
    completion_tokens = COMPLETION_TOKENS * len(texts)
    tokens = passes * (prompt_tokens + completion_tokens)
    cost = None if price is None else passes * price.cost(prompt_tokens, completion_tokens)
    return {
        "rows": len(texts),
        "requests": passes * len(texts),
        "prompt_tokens_per_request": round(prompt_tokens / max(1, len(texts))),
        "tokens": tokens,
        "price_per_mtok": None
        if price is None
        else [price.prompt_per_mtok, price.completion_per_mtok],
        "cost_usd": None if cost is None else round(cost, 6),
        "note": f"tokens approximated as characters / {CHARS_PER_TOKEN:g}",
    }
