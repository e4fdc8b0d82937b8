"""Prometheus metrics of one model server, shared by its REST and gRPC front ends.

`ServerMetrics` keeps its own `prometheus_client.CollectorRegistry` (not the
process-wide default registry), so several servers in one process (the tests)
each count their own. The REST API serves it at TF Serving's path,
`GET /monitoring/prometheus/metrics` (`PATH`), in Prometheus' text format 0.0.4:

    metrics = ServerMetrics(manager)
    metrics.observe_request("digits", "predict", 200, 0.012)                    # REST: the HTTP status
    metrics.observe_request("digits", "predict", "OK", 0.010, protocol="grpc")  # gRPC: the status code's name
    body, content_type = metrics.exposition()

Series:

- `serving_requests_total{model, api, code, protocol}`: answered requests.
  `api` is one of `APIS` (anything else counts as "other"); `model` is the
  model's name if the server knows it, else "" (a bounded label set, however
  many names clients make up); a REST client that went away before its answer
  counts as code 499.
- `serving_request_latency_seconds{model, api, protocol}` (histogram): from
  the request's arrival (its headers, on REST) to its answer being ready.
- `serving_batch_size_rows{model}` (histogram): rows per signature call of
  each model's batching queue, whichever front end the rows came from; read
  from the `Batcher`s (`batch_sizes()`) at scrape time.
- `serving_model_version_available{model, version}`: 1 for a version that is
  AVAILABLE, 0 for one loading or failed to load (END), none for one unloaded
  (its END row would add a series per published version); read from the model
  manager at scrape time (`manager.names()`, `manager.status(name)`: the rows
  of the REST and gRPC status answers).
- `serving_open_connections{protocol}`: connections open now
  (`connection_opened` / `connection_closed`).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

__all__ = ["APIS", "PATH", "ServerMetrics"]

log = logging.getLogger("pipelines.serve")

PATH = "/monitoring/prometheus/metrics"  # TF Serving's default (its --monitoring_config_file)
APIS = ("predict", "classify", "regress", "multi_inference", "metadata", "status")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    """One server's metrics (see the module docstring); thread-safe."""

    def __init__(self, manager=None):
        self.registry = CollectorRegistry()
        self.manager = manager
        self._requests = Counter(
            "serving_requests", "Answered requests, by model, API, status code and protocol.",
            ["model", "api", "code", "protocol"], registry=self.registry,
        )
        self._latency = Histogram(
            "serving_request_latency_seconds", "Seconds from a request's arrival to its answer, by model and API.",
            ["model", "api", "protocol"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self._connections = Gauge(
            "serving_open_connections", "Client connections open now.", ["protocol"], registry=self.registry,
        )
        if manager is not None:
            self.registry.register(_ManagerCollector(manager))

    def observe_request(self, model: str, api: str, code, seconds: float | None, protocol: str = "rest") -> None:
        """Count one answered request; `code`: an HTTP status, or a gRPC status code (or its name).
        `seconds` None counts it without a latency (a request rejected before it was parsed)."""
        model = self._model_label(model)
        api = api if api in APIS else "other"
        code = str(getattr(code, "name", code))  # grpc.StatusCode.OK -> "OK"
        self._requests.labels(model, api, code, protocol).inc()
        if seconds is not None:
            self._latency.labels(model, api, protocol).observe(seconds)

    def connection_opened(self, protocol: str = "rest") -> None:
        self._connections.labels(protocol).inc()

    def connection_closed(self, protocol: str = "rest") -> None:
        self._connections.labels(protocol).dec()

    def exposition(self) -> tuple[bytes, str]:
        """(body, Content-Type) of the metrics in Prometheus' text format."""
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4

    def _model_label(self, model: str | None) -> str:
        if not model:
            return ""
        if self.manager is None:
            return model
        try:
            return model if model in self.manager.names() else ""
        except Exception:  # noqa: BLE001 - counting must never fail a request
            return ""


class _ManagerCollector:
    """The model manager's state at scrape time: loaded versions and the batchers' batch sizes."""

    def __init__(self, manager):
        self.manager = manager

    def collect(self):
        versions = GaugeMetricFamily(
            "serving_model_version_available", "1 for a version of a model that is AVAILABLE, 0 for one "
            "loading or failed to load (END); versions unloaded are left out.", labels=["model", "version"],
        )
        batches = HistogramMetricFamily(
            "serving_batch_size_rows", "Rows per signature call of a model's batching queue.", labels=["model"],
        )
        for name in self.manager.names():
            try:
                state = self.manager.state(name)
                statuses = self.manager.status(name)
            except LookupError:  # gone meanwhile, or no version on disk yet
                continue
            for row in statuses:
                if row.state == "END" and row.error_code == "OK":
                    continue  # unloaded: listed in status as TF Serving does, not a series growing with each version
                versions.add_metric([name, str(row.version)], 1.0 if row.state == "AVAILABLE" else 0.0)
            sizes = state.batcher.batch_sizes()  # rows per call -> calls
            if sizes:
                buckets = [(str(float(le)), sum(n for r, n in sizes.items() if r <= le)) for le in BATCH_BUCKETS]
                buckets.append(("+Inf", sum(sizes.values())))
                batches.add_metric([name], buckets, sum(r * n for r, n in sizes.items()))
        yield versions
        yield batches
