"""Budgeted, rate-limited evaluation of the router, the LLM alone and each local model."""
