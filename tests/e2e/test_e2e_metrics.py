"""Prometheus metrics of the real process, on its own port."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from e2e_support import API_KEY, HeliosProcess
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow

POLICIES = """\
[[policies]]
tenant = "acme"
resource = "*"
limit = 3
window = "1h"
"""


def scrape(helios: HeliosProcess) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of /metrics by sample name: [(labels, value), ...]."""
    response = httpx.get(f"{helios.metrics_url}/metrics", timeout=5.0)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    assert name in samples, f"{name} missing from /metrics"
    return sum(v for found, v in samples[name] if labels.items() <= found.items())


def test_metrics_count_decisions(helios_factory: Callable[..., HeliosProcess]) -> None:
    helios = helios_factory(policies=POLICIES)
    before = scrape(helios)
    assert value(before, "helios_rate_limits_total", result="allowed") == 0
    assert value(before, "helios_buckets") == 0

    with helios.client() as client:
        statuses = [
            client.get(
                "/allow?tenant=acme&resource=search", headers={"X-API-Key": API_KEY}
            ).status_code
            for _ in range(5)
        ]
        statuses.append(
            client.get(
                "/allow?tenant=acme&resource=other&cost=2", headers={"X-API-Key": API_KEY}
            ).status_code
        )
        statuses.append(
            client.get(
                "/allow?tenant=acme&resource=search&cost=0", headers={"X-API-Key": API_KEY}
            ).status_code
        )
    assert statuses == [200, 200, 200, 429, 429, 200, 400]

    samples = scrape(helios)
    assert value(samples, "helios_rate_limits_total", result="allowed") == 4
    assert value(samples, "helios_rate_limits_total", result="denied") == 2
    assert value(samples, "helios_rate_limits_total", result="shadow_denied") == 0

    assert (
        value(samples, "helios_requests_total", transport="http", route="/allow", code="200") == 4
    )
    assert value(samples, "helios_requests_total", route="/allow", code="429") == 2
    assert value(samples, "helios_requests_total", code="400") == 1

    # The latency histogram: cumulative buckets ending in +Inf == count, a sum > 0.
    buckets = [
        (labels["le"], count)
        for labels, count in samples["helios_decision_duration_seconds_bucket"]
        if labels["transport"] == "http"
    ]
    counts = [count for _, count in buckets]
    assert buckets[-1][0] == "+Inf"
    assert counts == sorted(counts)
    count = value(samples, "helios_decision_duration_seconds_count", transport="http")
    assert counts[-1] == count
    # Every data-plane request is timed, including the readiness polls of /health.
    assert count >= 7
    assert value(samples, "helios_decision_duration_seconds_sum", transport="http") > 0
    # No gRPC call was made: its series are there, at zero.
    assert value(samples, "helios_decision_duration_seconds_count", transport="grpc") == 0
    assert value(samples, "helios_requests_total", transport="grpc") == 0

    # Two (tenant, resource) pairs hold state: two buckets.
    assert value(samples, "helios_buckets") == 2


def test_metrics_port_serves_only_metrics(helios_factory: Callable[..., HeliosProcess]) -> None:
    helios = helios_factory(policies=POLICIES)
    assert httpx.get(f"{helios.metrics_url}/elsewhere", timeout=5.0).status_code == 404
    assert httpx.post(f"{helios.metrics_url}/metrics", timeout=5.0).status_code == 405
    # And the data plane does not serve them.
    with helios.client() as client:
        assert client.get("/metrics").status_code == 404


def test_errors_are_counted_under_their_route(
    helios_factory: Callable[..., HeliosProcess],
) -> None:
    helios = helios_factory(policies=POLICIES)
    with helios.client() as client:
        assert (
            client.get(
                "/allow?tenant=acme&resource=r&cost=0", headers={"X-API-Key": API_KEY}
            ).status_code
            == 400
        )
        assert client.get("/allow?tenant=acme&resource=r").status_code == 401
        assert client.get("/no/such/route").status_code == 404
    samples = scrape(helios)
    assert value(samples, "helios_requests_total", route="/allow", code="400") == 1
    assert value(samples, "helios_requests_total", route="/allow", code="401") == 1
