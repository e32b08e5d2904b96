"""The gateway's decision metrics: near the limit, and by tenant when enabled."""

from __future__ import annotations

import trio
import trio.testing
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from helios.gateway.metrics import GatewayCollector, GatewayMetrics, make_registry
from helios.gateway.service import Check, Gateway
from helios.gateway.tenants import ALLOWED, DENIED, SHADOW_DENIED, TenantCounts

from .support import API_KEY, make_gateway, make_server

# 10 units an hour: nothing refills during a test.
TEN = {"tenant": "*", "resource": "*", "limit": 10, "window": "1h"}
SHADOW = {"tenant": "shadow", "resource": "*", "limit": 1, "window": "1h", "shadow": True}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(gateway: Gateway) -> Samples:
    collector = GatewayCollector(gateway, GatewayMetrics(), make_server(gateway))
    text = generate_latest(make_registry(collector)).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def run(gateway: Gateway, checks: list[Check]) -> None:
    async def main() -> None:
        owner = gateway.identify(API_KEY)
        for check in checks:
            gateway.decide(check, owner)

    trio.run(main, clock=trio.testing.MockClock())


def test_near_limit_counts_decisions_that_leave_less_than_a_fifth() -> None:
    gateway = make_gateway(TEN, SHADOW)
    # remaining after each: 9 .. 0, then two denials; under 0.2 × 10 is 1 and 0.
    # The shadow policy's first decision leaves 0 (allowed), its second would deny.
    run(gateway, [Check("acme", "r", 1)] * 12 + [Check("shadow", "r", 1)] * 2)
    assert gateway.near_limit == [3, 2, 1]
    samples = scrape(gateway)
    assert samples[("helios_near_limit_total", (("result", "allowed"),))] == 3
    assert samples[("helios_near_limit_total", (("result", "denied"),))] == 2
    assert samples[("helios_near_limit_total", (("result", "shadow_denied"),))] == 1
    # Off by default: no tenant series.
    assert not any(name == "helios_tenant_rate_limits_total" for name, _ in samples)


def test_near_limit_looks_at_every_band() -> None:
    # 10 a second and 100 a day: after 3 units a second for 30 seconds, the
    # second band has 10 of 100 left, under a fifth, while the tightest band
    # by units (7 of 10) is not near.
    policy = {
        "tenant": "acme",
        "resource": "r",
        "algorithm": "fixed_window",
        "bands": [{"limit": 10, "window": "1s"}, {"limit": 100, "window": "1d"}],
    }
    gateway = make_gateway(policy)

    async def main() -> None:
        owner = gateway.identify(API_KEY)
        for _ in range(30):
            decision = gateway.decide(Check("acme", "r", 3), owner)
            await trio.sleep(1)
        assert decision.band.limit == 10 and decision.remaining == 7
        assert decision.near_limit

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # Allowed decisions that left under 20 of 100 in the day band: those
    # leaving 19, 16, 13 and 10.
    assert gateway.near_limit == [4, 0, 0]


def test_tenant_series_hold_the_busiest_tenants_and_other() -> None:
    gateway = make_gateway(TEN, SHADOW)
    gateway.tenant_counts = TenantCounts(2)
    scrape(gateway)
    checks = [Check(f"t{index}", "r", 1) for index in range(1, 5) for _ in range(index * 3)]
    run(gateway, checks)
    assert gateway.tenant_counts.entries["t4"][:3] == [10, 2, 0]
    # The first scrape starts the top tenants' series at zero; all is in other.
    first = scrape(gateway)
    tenants = {dict(labels)["tenant"] for name, labels in first if "tenant_rate" in name}
    assert tenants == {"t4", "t3", "other"}
    assert (
        first[("helios_tenant_rate_limits_total", (("result", "allowed"), ("tenant", "t4")))] == 0
    )
    other_allowed = (("result", "allowed"), ("tenant", "other"))
    assert first[("helios_tenant_rate_limits_total", other_allowed)] == 3 + 6 + 9 + 10

    run(gateway, [Check("t4", "r", 1), Check("shadow", "r", 1), Check("shadow", "r", 1)])
    second = scrape(gateway)
    denied_t4 = (("result", "denied"), ("tenant", "t4"))
    assert second[("helios_tenant_rate_limits_total", denied_t4)] == 1
    shadow = (("result", "shadow_denied"), ("tenant", "shadow"))
    assert second[("helios_tenant_rate_limits_total", shadow)] == 0
    # t3 left the top (no decision since the last scrape); other only grew.
    assert not any(dict(labels).get("tenant") == "t3" for _, labels in second)
    assert second[("helios_tenant_rate_limits_total", other_allowed)] >= 28


def test_batch_checks_count_by_tenant_and_near_the_limit() -> None:
    gateway = make_gateway(TEN)
    gateway.tenant_counts = TenantCounts(5)

    async def main() -> None:
        owner = gateway.identify(API_KEY)
        gateway.decide_batch([Check("acme", "r", 5), Check("beta", "r", 9)], owner)

    trio.run(main, clock=trio.testing.MockClock())
    assert gateway.near_limit == [1, 0, 0]
    entries = gateway.tenant_counts.entries
    assert entries["acme"][ALLOWED] == entries["beta"][ALLOWED] == 1
    assert entries["beta"][DENIED] == entries["beta"][SHADOW_DENIED] == 0
