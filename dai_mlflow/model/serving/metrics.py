"""Prometheus metrics of the server, summed over its worker processes.

prometheus_client's multiprocess mode: each worker writes its values under
``PROMETHEUS_MULTIPROC_DIR`` (a private folder the supervisor makes before it starts workers),
and ``/metrics`` on any worker reads them all. The metrics: docs/serving.md, section 0.
"""

from __future__ import annotations

import os
from typing import Dict

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 5000, 10000, 100000)


class Metrics:
    """The server's metrics (create after ``PROMETHEUS_MULTIPROC_DIR`` is set)."""

    def __init__(self, info: Dict[str, str]) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter(
            "dai_mlflow_requests", "HTTP requests answered", ["route", "status"]
        )
        self.errors = Counter(
            "dai_mlflow_request_errors",
            "Requests answered with an error (HTTP >= 400 or a JSON-RPC error)",
            ["route", "status"],
        )
        self.latency = Histogram(
            "dai_mlflow_request_duration_seconds",
            "Time from a request's first byte to its answer",
            ["route"],
            buckets=LATENCY_BUCKETS,
        )
        self.call_rows = Histogram(
            "dai_mlflow_scorer_call_rows", "Rows per scorer call", buckets=ROWS_BUCKETS
        )
        self.call_seconds = Histogram(
            "dai_mlflow_scorer_call_duration_seconds",
            "Duration of one scorer call (parse, predict, split)",
            buckets=LATENCY_BUCKETS,
        )
        self.log_rows = Counter(
            "dai_mlflow_inference_log_rows", "Rows written to the inference log"
        )
        self.log_dropped = Counter(
            "dai_mlflow_inference_log_dropped",
            "Rows not logged because the inference log could not keep up",
        )
        self.worker_starts = Counter("dai_mlflow_worker_starts", "Worker processes started")
        names = sorted(info)
        self.info = Gauge(
            "dai_mlflow_model_info",
            "The served model (value 1)",
            names,
            multiprocess_mode="max",
        )
        self.info.labels(**info).set(1)
        self._children: Dict[tuple, tuple] = {}

    def answered(self, route: str, status: int, seconds: float, error: bool) -> None:
        """Count one answer."""
        key = (route, status)
        children = self._children.get(key)
        if children is None:
            code = str(status)
            children = (
                self.requests.labels(route, code),
                self.errors.labels(route, code),
                self.latency.labels(route),
            )
            self._children[key] = children
        children[0].inc()
        if error or status >= 400:
            children[1].inc()
        children[2].observe(seconds)

    @staticmethod
    def render() -> bytes:
        """All workers' metrics in Prometheus text format."""
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=os.environ[MULTIPROC_ENV])
        return generate_latest(registry)
