"""Prometheus metrics of the control plane (``control.metrics_port``).

The REST application counts each request it answers in :class:`ControlMetrics`
(plain integers, as the gateway does); :class:`ControlCollector` reads them,
and the store's health, at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from helios import __version__

if TYPE_CHECKING:
    from helios.runtime import StoreHealth

# Upper bounds of the latency buckets, in seconds: 1 ms to 10 s. Control-plane
# requests write to the store (etcd), which takes milliseconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# The methods counted by name; anything else a client sends is "other", so
# that a client cannot add series at will. Routes are the application's rules.
# "GRPC" marks a call of the gRPC control API, whose route is /service/method.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "GRPC"})
UNKNOWN_ROUTE = "unknown"


class ControlMetrics:
    """Counters the REST application updates per request."""

    def __init__(self) -> None:
        # (method, route, status) -> requests; route is the rule that matched.
        self.requests: dict[tuple[str, str, int], int] = {}
        self._latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0

    def observe(self, method: str, route: str | None, status: int, seconds: float) -> None:
        """Count one answered request; ``route`` is None when no rule matched."""
        key = (method if method in METHODS else "other", route or UNKNOWN_ROUTE, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self._latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._latency_sum += seconds

    def latency(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative histogram buckets and the sum, as Prometheus wants them."""
        buckets = []
        total = 0
        for bound, count in zip((*LATENCY_BUCKETS, None), self._latency_counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound is None else repr(bound), float(total)))
        return buckets, self._latency_sum


class ControlCollector(Collector):
    """Exposes the control plane's statistics at scrape time."""

    def __init__(self, health: StoreHealth, metrics: ControlMetrics | None = None) -> None:
        self.health = health
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        if self.metrics is not None:
            yield from _request_metrics(self.metrics)
        yield GaugeMetricFamily(
            "helios_control_store_up",
            "1 while the control plane's store answers.",
            value=0 if self.health.error else 1,
        )
        yield CounterMetricFamily(
            "helios_control_store_failures",
            "Failed checks of the control plane's store.",
            value=self.health.failures,
        )
        info = GaugeMetricFamily(
            "helios_build_info",
            "Helios version, role and mode.",
            labels=["version", "role", "mode"],
        )
        info.add_metric([__version__, "control", ""], 1)
        yield info


def _request_metrics(metrics: ControlMetrics) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        "helios_control_requests",
        "Control-plane REST requests answered, by method, route and status code.",
        labels=["method", "route", "code"],
    )
    for (method, route, status), count in sorted(metrics.requests.items()):
        requests.add_metric([method, route, str(status)], count)
    yield requests
    buckets, total = metrics.latency()
    latency = HistogramMetricFamily(
        "helios_control_request_duration_seconds",
        "Time to answer a control-plane REST request.",
    )
    latency.add_metric([], buckets, total)
    yield latency
