"""Prometheus metrics with TF Serving's metric names, served per --monitoring_config_file."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from serving.server.errors import ServingError

_LATENCY_BUCKETS = tuple(x / 1e6 for x in (100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 100_000, 1_000_000))


class Metrics:
    """Request counts/latencies and load attempts, in a registry private to one server."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            ":tensorflow:serving:request_count",
            "Number of inference requests.",
            ["model_name", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Latency of inference requests in seconds.",
            ["model_name", "API", "entrypoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._loads = Counter(
            ":tensorflow:cc:saved_model:load_attempt_count",
            "Number of SavedModel load attempts.",
            ["model_path", "status"],
            registry=self.registry,
        )

    @contextmanager
    def request(self, model_name: str, api: str, entrypoint: str) -> Iterator[None]:
        """Time one request and count it by outcome (``OK`` or the error code's name)."""
        start = time.perf_counter()
        status = "OK"
        try:
            yield
        except ServingError as e:
            status = e.error_code_name
            raise
        finally:
            self._latency.labels(model_name, api, entrypoint).observe(time.perf_counter() - start)
            self._requests.labels(model_name, status).inc()

    def load_attempt(self, model_path: str, ok: bool) -> None:
        """Count one version load attempt."""
        self._loads.labels(model_path, "success" if ok else "fail").inc()

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
