"""Prometheus metrics of one server, in their own registry (several apps may share a process in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: request paths reported by name; anything else is counted as "other" (bounded label values).
ENDPOINTS = ("/v1/completions", "/v1/answer", "/healthz", "/metrics", "/")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sparekit_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"],
                                registry=r)
        self.errors = Counter("sparekit_errors", "Requests answered with status >= 400.", ["endpoint", "status"],
                              registry=r)
        self.latency = Histogram("sparekit_request_seconds", "Request latency, until the last byte.", ["endpoint"],
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.queue_depth = Gauge("sparekit_queue_depth", "Prompts waiting for a batch.", registry=r)
        self.in_flight = Gauge("sparekit_in_flight", "Requests being handled.", registry=r)
        self.streams = Gauge("sparekit_active_streams", "Streaming responses open.", registry=r)
        self.batch_size = Histogram("sparekit_batch_size", "Rows per prompt pass (a batch, or rows joining one).",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.step_rows = Histogram("sparekit_step_rows", "Rows in one decoding step.",
                                   buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.batch_seconds = Histogram("sparekit_batch_seconds",
                                       "Time the model ran without a pause (a batch and the rows that joined it).",
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.tokens = Counter("sparekit_generated_tokens", "Completion tokens returned.", registry=r)
        self.cancelled = Counter("sparekit_cancelled", "Prompts whose client went away before the answer.",
                                 registry=r)

    def record(self, path: str, status: int, seconds: float) -> None:
        endpoint = path if path in ENDPOINTS else "other"
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
