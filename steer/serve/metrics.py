"""The service's own metrics in Prometheus' conventions (`/metrics`): requests by expert, outcome and mode,
latency, generated tokens and the decode batch each request shared. Ray Serve exports its own (queue lengths,
replica health, `serve_batch_size` of every `@serve.batch`) through Ray's metrics agent beside these."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)


class ServiceMetrics:
    """One registry per ingress replica (not the process-global one, so replicas in one process stay apart)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("steerlab_requests", "Chat completion requests by outcome",
                                ["expert", "status", "stream"], registry=self.registry)
        self.latency = Histogram("steerlab_request_latency_seconds", "Time from request to last token",
                                 ["expert"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.tokens = Counter("steerlab_completion_tokens", "Generated tokens", ["expert"], registry=self.registry)
        self.batch = Histogram("steerlab_batch_size", "Requests in the decode batch that answered a request",
                               ["expert"], buckets=BATCH_BUCKETS, registry=self.registry)

    def answered(self, expert: str, seconds: float, tokens: int, batch_size: int, stream: bool) -> None:
        self.requests.labels(expert, "200", str(stream).lower()).inc()
        self.latency.labels(expert).observe(seconds)
        self.tokens.labels(expert).inc(tokens)
        self.batch.labels(expert).observe(batch_size)

    def unanswered(self, status: int) -> None:
        """A request refused (4xx, 503) or cut short by an error (500)."""
        self.requests.labels("", str(status), "").inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
