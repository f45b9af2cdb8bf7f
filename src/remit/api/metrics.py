"""Prometheus metrics of one server process: requests, decisions, batches, live holds."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from remit.batching import AsyncBatcher
from remit.engine import Engine

_LATENCY_BUCKETS_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """Each app has its own registry, so several apps in one process (tests) do not collide."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "remit_http_requests",
            "HTTP requests by endpoint and status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "remit_http_request_duration_seconds",
            "HTTP request latency by endpoint.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS_SECONDS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "remit_decisions", "Authorize decisions by outcome.", ["outcome"], registry=self.registry
        )
        self.batch_sizes = Histogram(
            "remit_batch_size",
            "Requests decided per store transaction.",
            buckets=_BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.holds_live = Gauge(
            "remit_holds_live", "Holds not yet committed, released or expired.", registry=self.registry
        )
        self.queue_length = Gauge("remit_engine_queue_length", "Requests waiting for a batch.", registry=self.registry)
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        children = self._children.get((endpoint, status))
        if children is None:  # label look-ups are the slow part of prometheus_client; keep the children
            children = (self.requests.labels(endpoint, str(status)), self.latency.labels(endpoint))
            self._children[(endpoint, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self, engine: Engine, batcher: AsyncBatcher | None) -> bytes:
        self.holds_live.set(engine.holds_live())
        self.queue_length.set(batcher.queue_length if batcher is not None else 0)
        return generate_latest(self.registry)
