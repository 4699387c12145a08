"""Prometheus metrics of the service: requests, latency, batching queue depth, documents per collection."""
from __future__ import annotations

from collections.abc import Callable

# labels come only from fixed sets, so made-up methods and paths cannot create unbounded series
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
UNMATCHED = "unmatched"  # the path label of a request no route matched (or refused before routing)


class Metrics:
    def __init__(self, queue_depth: Callable[[], int], documents: Callable[[], dict[str, int]]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.core import GaugeMetricFamily

        self.registry = CollectorRegistry()
        self.requests = Counter("flagstone_requests", "HTTP requests", ["method", "path", "status"],
                                registry=self.registry)
        self.latency = Histogram("flagstone_request_seconds", "HTTP request latency", ["path"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        queue = Gauge("flagstone_encode_queue_depth", "encode requests waiting for the model",
                      registry=self.registry)
        queue.set_function(queue_depth)

        class DocumentCount:
            def collect(self):
                family = GaugeMetricFamily("flagstone_documents", "documents per collection", labels=["collection"])
                for name, count in documents().items():
                    family.add_metric([name], count)
                yield family

        self.registry.register(DocumentCount())

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        """``path`` must be a route template or :data:`UNMATCHED`; a method outside :data:`METHODS` counts as
        ``other``."""
        method = method if method in METHODS else "other"
        self.requests.labels(method, path, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
