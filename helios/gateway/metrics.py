"""Prometheus metrics of the gateway.

The hot path only bumps plain integers (a dict entry per route and status,
and a latency bucket, per HTTP request or gRPC call); prometheus-client reads
them through a collector at scrape time. That keeps the cost per request to a
few hundred nanoseconds instead of a lock and several label lookups.
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
from prometheus_client.registry import Collector, CollectorRegistry

from helios import __version__
from helios.backends.breaker import CircuitState
from helios.gateway.service import Gateway
from helios.gateway.tenants import RESULTS, TenantCounts
from helios.server.http import HTTPServer

if TYPE_CHECKING:
    from helios.gateway.sync import PolicySync

# Upper bounds of the latency buckets, in seconds: 25 µs to 1 s.
LATENCY_BUCKETS = (
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)


TRANSPORTS = ("http", "grpc")


class GatewayMetrics:
    """Counters the HTTP adapter updates per request, and the gRPC listener per call."""

    def __init__(self) -> None:
        # HTTP: (route, status code) and gRPC: (route, status code name).
        self.requests: dict[tuple[str, int], int] = {}
        self.grpc_requests: dict[tuple[str, str], int] = {}
        self._latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        self._grpc_latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self._grpc_latency_sum = 0.0

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self._latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._latency_sum += seconds

    def observe_grpc(self, route: str, code: str, seconds: float | None) -> None:
        """One gRPC call answered; ``seconds`` is None when no request message was read."""
        key = (route, code)
        self.grpc_requests[key] = self.grpc_requests.get(key, 0) + 1
        if seconds is not None:
            self._grpc_latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._grpc_latency_sum += seconds

    def latency(self, transport: str = "http") -> tuple[list[tuple[str, float]], float]:
        """Cumulative histogram buckets and the sum, as Prometheus wants them."""
        if transport == "http":
            counts, seconds = self._latency_counts, self._latency_sum
        else:
            counts, seconds = self._grpc_latency_counts, self._grpc_latency_sum
        buckets = []
        total = 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return buckets, seconds


class GatewayCollector(Collector):
    """Exposes the gateway's statistics at scrape time."""

    def __init__(
        self,
        gateway: Gateway,
        metrics: GatewayMetrics,
        server: HTTPServer,
        sync: PolicySync | None = None,
    ) -> None:
        self.gateway = gateway
        self.metrics = metrics
        self.server = server
        self.sync = sync

    def collect(self) -> Iterator[Metric]:
        gateway = self.gateway
        requests = CounterMetricFamily(
            "helios_requests",
            "Data-plane HTTP requests and gRPC calls answered, by transport, route and"
            " status code.",
            labels=["transport", "route", "code"],
        )
        for (route, status), count in sorted(self.metrics.requests.items()):
            requests.add_metric(["http", route, str(status)], count)
        for (route, code), count in sorted(self.metrics.grpc_requests.items()):
            requests.add_metric(["grpc", route, code], count)
        yield requests

        limits = CounterMetricFamily(
            "helios_rate_limits", "Rate-limit decisions, by result.", labels=["result"]
        )
        limits.add_metric(["allowed"], gateway.allowed)
        limits.add_metric(["denied"], gateway.denied)
        limits.add_metric(["shadow_denied"], gateway.shadow_denied)
        yield limits
        if gateway.tenant_counts is not None:
            yield _tenant_metrics(gateway.tenant_counts)
        near = CounterMetricFamily(
            "helios_near_limit",
            "Decisions that left less than a fifth of the tightest band, by result.",
            labels=["result"],
        )
        for result, count in zip(RESULTS, gateway.near_limit, strict=True):
            near.add_metric([result], count)
        yield near

        modes = CounterMetricFamily(
            "helios_decisions",
            "Decisions by where they were made: fast (memory), strong (Redis), local"
            " (memory, Redis failing), open (allowed, Redis failing).",
            labels=["mode"],
        )
        for mode, count in sorted(gateway.modes.items()):
            modes.add_metric([mode], count)
        yield modes

        if gateway.remote is not None:
            errors = CounterMetricFamily(
                "helios_backend_errors",
                "Failed calls to the rate-limit store (Redis), by kind.",
                labels=["kind"],
            )
            for kind, count in sorted(gateway.backend_errors.items()):
                errors.add_metric([kind], count)
            yield errors
            breaker = gateway.breaker.statistics()
            circuit = GaugeMetricFamily(
                "helios_backend_circuit_state",
                "Circuit breaker in front of Redis: 1 for the current state.",
                labels=["state"],
            )
            for state in CircuitState:
                circuit.add_metric([state.value], 1 if state is breaker.state else 0)
            yield circuit
            yield CounterMetricFamily(
                "helios_backend_circuit_opened",
                "Times the circuit breaker in front of Redis opened.",
                value=breaker.opened,
            )

        latency = HistogramMetricFamily(
            "helios_decision_duration_seconds",
            "Time to answer a data-plane request or gRPC call, from parsed request to"
            " rendered response.",
            labels=["transport"],
        )
        for transport in TRANSPORTS:
            buckets, total = self.metrics.latency(transport)
            latency.add_metric([transport], buckets, total)
        yield latency

        table = gateway.table.statistics()
        yield GaugeMetricFamily("helios_buckets", "Buckets held in memory.", value=table.buckets)
        yield GaugeMetricFamily(
            "helios_buckets_max",
            "Configured upper bound of buckets in memory.",
            value=table.max_buckets,
        )
        yield CounterMetricFamily(
            "helios_bucket_evictions",
            "Idle buckets dropped to free memory.",
            value=table.evictions,
        )
        yield CounterMetricFamily(
            "helios_bucket_refusals",
            "New keys refused because the bucket table was full of buckets in use.",
            value=table.refusals,
        )
        yield GaugeMetricFamily(
            "helios_policies", "Policies currently loaded.", value=len(gateway.policies)
        )
        yield GaugeMetricFamily(
            "helios_policy_revision",
            "Revision of the loaded policies.",
            value=gateway.policies.revision,
        )
        yield CounterMetricFamily(
            "helios_policy_reloads",
            "Times new policies were applied.",
            value=gateway.policy_reloads,
        )
        yield GaugeMetricFamily(
            "helios_http_connections",
            "Open data-plane HTTP connections.",
            value=self.server.connections,
        )
        yield CounterMetricFamily(
            "helios_http_bad_requests",
            "Data-plane requests rejected as malformed or too large.",
            value=self.server.bad_requests,
        )
        info = GaugeMetricFamily(
            "helios_build_info",
            "Helios version, role and mode.",
            labels=["version", "role", "mode"],
        )
        info.add_metric([__version__, gateway.role, gateway.mode], 1)
        yield info
        if self.sync is not None:
            yield from _sync_metrics(self.sync)


def _tenant_metrics(counts: TenantCounts) -> Metric:
    # Picks the busiest tenants since the last scrape: see helios.gateway.tenants.
    tenants, other = counts.snapshot()
    family = CounterMetricFamily(
        "helios_tenant_rate_limits",
        f"Rate-limit decisions by tenant and result: the {counts.max_tenants} busiest"
        " tenants since the last scrape, the rest as tenant other.",
        labels=["tenant", "result"],
    )
    for tenant, values in [*tenants, ("other", other)]:
        for result, count in zip(RESULTS, values, strict=True):
            family.add_metric([tenant, result], count)
    return family


def _sync_metrics(sync: PolicySync) -> Iterator[Metric]:
    statistics = sync.statistics()
    yield GaugeMetricFamily(
        "helios_store_revision",
        "Store revision whose policies and keys this gateway has applied.",
        value=statistics.revision,
    )
    yield GaugeMetricFamily(
        "helios_policies_stale",
        "1 while the store is unreachable and the policies may be stale.",
        value=1 if statistics.state.value == "stale" else 0,
    )
    yield CounterMetricFamily(
        "helios_store_resyncs",
        "Full reloads after a lost watch or a compaction.",
        value=statistics.resyncs,
    )
    yield GaugeMetricFamily(
        "helios_tenant_keys",
        "Tenant API keys issued by the control plane.",
        value=statistics.tenant_keys,
    )
    yield CounterMetricFamily(
        "helios_counter_resets", "Counter resets applied.", value=statistics.resets_applied
    )
    errors = CounterMetricFamily(
        "helios_store_errors", "Failures talking to the store, by kind.", labels=["kind"]
    )
    for kind, count in sorted(statistics.errors.items()):
        errors.add_metric([kind], count)
    yield errors


def make_registry(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
