"""Prometheus metrics of the service (names follow Prometheus conventions)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from llm_router.errors import spent_by
from llm_router.schemas import Classification, Usage


class ServiceMetrics:
    """Every counter and histogram of one app, in its own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "llm_router_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=registry,
        )
        self.seconds = Histogram(
            "llm_router_request_seconds",
            "HTTP request latency",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.classifications = Counter(
            "llm_router_classifications",
            "answers by the classifier that gave them and the fallback reason",
            ["source", "reason"],
            registry=registry,
        )
        self.llm_requests = Counter(
            "llm_router_llm_requests", "HTTP attempts sent to the LLM", registry=registry
        )
        self.llm_tokens = Counter(
            "llm_router_llm_tokens", "LLM tokens by kind", ["kind"], registry=registry
        )
        self.llm_cost = Counter(
            "llm_router_llm_cost_usd", "LLM cost reported by the endpoint", registry=registry
        )
        self.cache_hits = Counter(
            "llm_router_cache_hits", "answers taken from the disk cache", registry=registry
        )
        self.confidence = Histogram(
            "llm_router_confidence",
            "calibrated confidence of the answers, by the classifier that gave them",
            ["source"],
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
            registry=registry,
        )

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.seconds.labels(endpoint).observe(seconds)

    def classified(self, result: Classification) -> None:
        self.classifications.labels(result.source, result.fallback_reason or "none").inc()
        self.confidence.labels(result.source).observe(result.confidence)
        if result.cached:
            self.cache_hits.inc()
        self.spent(result.usage)

    def failed(self, error: BaseException) -> None:
        """A row no classifier answered: what its LLM attempts cost still counts."""
        self.spent(spent_by(error))

    def spent(self, usage: Usage | None) -> None:
        """Every HTTP attempt to the LLM, failed ones included, with its tokens and cost."""
        if usage is not None:
            self.llm_requests.inc(usage.requests)
            self.llm_tokens.labels("prompt").inc(usage.prompt_tokens)
            self.llm_tokens.labels("completion").inc(usage.completion_tokens)
            if usage.cost_usd:
                self.llm_cost.inc(usage.cost_usd)
