"""The control plane's request metrics: counted by method, rule and status, and timed."""

from __future__ import annotations

from control_support import ADMIN_KEY, Api, CountingStore
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from helios.control.metrics import ControlCollector, ControlMetrics
from helios.control.model import Layout
from helios.control.plane import ControlPlane
from helios.control.rest import create_app
from helios.gateway.auth import KeyRing
from helios.gateway.metrics import make_registry
from helios.runtime import StoreHealth

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(health: StoreHealth, metrics: ControlMetrics) -> Samples:
    text = generate_latest(make_registry(ControlCollector(health, metrics))).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


async def test_requests_are_counted_by_method_rule_and_status(
    plane: ControlPlane, store: CountingStore
) -> None:
    metrics = ControlMetrics()
    api = Api(create_app(plane, KeyRing([ADMIN_KEY]), metrics=metrics).test_client(), store)
    assert (await api("POST", "/v1/tenants", {"name": "acme"})).status == 201
    assert (await api("GET", "/v1/tenants/acme")).status == 200
    assert (await api("GET", "/v1/tenants/beta")).status == 404
    assert (await api("GET", "/v1/tenants/acme", key=None)).status == 401
    assert (await api("GET", "/v1/no/such/route")).status == 404
    assert (await api("BREW", "/v1/tenants")).status == 405
    assert (await api("GET", "/health", key=None)).status == 200

    # Paths with names in them are counted under their rule: a bounded set.
    assert metrics.requests == {
        ("POST", "/v1/tenants", 201): 1,
        ("GET", "/v1/tenants/<tenant>", 200): 1,
        ("GET", "/v1/tenants/<tenant>", 404): 1,
        ("GET", "/v1/tenants/<tenant>", 401): 1,
        ("GET", "unknown", 404): 1,
        ("other", "unknown", 405): 1,
        ("GET", "/health", 200): 1,
    }

    samples = scrape(StoreHealth(store, Layout("/helios/")), metrics)
    requests = {
        (labels["method"], labels["route"], labels["code"]): value
        for labels, value in samples["helios_control_requests_total"]
    }
    assert requests[("GET", "/v1/tenants/<tenant>", "404")] == 1
    buckets = samples["helios_control_request_duration_seconds_bucket"]
    assert buckets[-1] == ({"le": "+Inf"}, 7.0)
    assert [value for _, value in buckets] == sorted(value for _, value in buckets)
    assert samples["helios_control_request_duration_seconds_count"] == [({}, 7.0)]
    assert samples["helios_control_store_up"] == [({}, 1.0)]
    assert samples["helios_control_store_failures_total"] == [({}, 0.0)]
