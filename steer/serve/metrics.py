"""The service's own metrics in Prometheus' conventions (`/metrics`): requests by expert, outcome and mode;
requests that did not finish, by reason (refused, timeout, abandoned, error); latency, time to first token, time
queued at the expert, decode speed, generated tokens and the decode batch each request shared. Ray Serve exports
its own (queue lengths, replica health) through Ray's metrics agent beside these."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
SPEED_BUCKETS = (1, 2, 5, 10, 20, 40, 80, 160, 320)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)
CLIENT_CLOSED = 499  # the status recorded for a request whose client left before its answer ended (nginx's convention)


def reason(status: int) -> str:
    """Why a request with this status did not finish."""
    return {408: "timeout", CLIENT_CLOSED: "abandoned", 503: "refused"}.get(status, "error" if status >= 500 else "refused")


class ServiceMetrics:
    """One registry per ingress replica (not the process-global one, so replicas in one process stay apart)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("steerlab_requests", "Completion requests by outcome",
                                ["expert", "status", "stream"], registry=self.registry)
        self.unfinished = Counter("steerlab_unfinished_requests", "Requests not answered in full, by reason "
                                  "(refused: 4xx or 503; timeout: 408; abandoned: the client left; error: 500)",
                                  ["reason"], registry=self.registry)
        self.latency = Histogram("steerlab_request_latency_seconds", "Time from request to last token",
                                 ["expert"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.first = Histogram("steerlab_time_to_first_token_seconds", "Time from request to its first token",
                               ["expert"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.queued = Histogram("steerlab_queue_seconds", "Time a request waited at its expert before decoding",
                                ["expert"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.speed = Histogram("steerlab_tokens_per_second", "A request's generated tokens over its answer time",
                               ["expert"], buckets=SPEED_BUCKETS, registry=self.registry)
        self.tokens = Counter("steerlab_completion_tokens", "Generated tokens", ["expert"], registry=self.registry)
        self.batch = Histogram("steerlab_batch_size", "Requests in the decode batch that answered a request",
                               ["expert"], buckets=BATCH_BUCKETS, registry=self.registry)

    def first_token(self, expert: str, seconds: float, queued_s: float) -> None:
        self.first.labels(expert).observe(seconds)
        self.queued.labels(expert).observe(queued_s)

    def answered(self, expert: str, seconds: float, tokens: int, batch_size: int, stream: bool,
                 answer_s: float | None = None) -> None:
        self.requests.labels(expert, "200", str(stream).lower()).inc()
        self.latency.labels(expert).observe(seconds)
        self.tokens.labels(expert).inc(tokens)
        self.batch.labels(expert).observe(batch_size)
        if answer_s and tokens:
            self.speed.labels(expert).observe(tokens / answer_s)

    def unanswered(self, status: int) -> None:
        """A request refused (4xx, 503), timed out (408), abandoned by its client (499) or cut short (500)."""
        self.requests.labels("", str(status), "").inc()
        self.unfinished.labels(reason(status)).inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
