"""The Grafana dashboard: every panel queries something, and only metrics Helios exports.

The metric names are checked against the /metrics page of a real STRONG-mode
gateway (on a real Redis, so that the backend's metrics are there too) after it
has made some decisions.
"""

from __future__ import annotations

import pytest
from deploy_support import (
    dashboard,
    exported_names,
    expressions,
    make_decisions,
    metric_names,
    panels,
)
from e2e_support import HeliosProcess


def test_every_panel_has_a_query() -> None:
    document = dashboard()
    assert document["uid"] and document["title"]
    found = panels(document)
    assert found
    assert len({panel["id"] for panel in found}) == len(found), "panel ids are unique"
    for panel in found:
        assert panel["targets"], f"{panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{panel['title']!r} has an empty query"
            assert metric_names(target["expr"]), f"{panel['title']!r} reads no Helios metric"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]


def test_the_dashboard_covers_what_operators_watch() -> None:
    exprs = expressions(dashboard())

    def reads(fragment: str) -> bool:
        return any(fragment in expr for expr in exprs)

    assert reads("helios_rate_limits_total[") and reads("by (result)")
    for quantile in ("0.5", "0.99"):
        assert reads(f"histogram_quantile({quantile}, sum by (le, transport) (rate(helios_decision")
    assert reads('topk(10, sum by (tenant) (rate(helios_tenant_rate_limits_total{result="denied"}[')
    assert reads("helios_backend_errors_total")
    assert reads("helios_backend_circuit_state")
    assert reads("helios_buckets")
    assert reads("max by (instance) (helios_policy_revision)")


@pytest.mark.slow
def test_every_metric_on_the_dashboard_is_exported(
    strong_gateway: HeliosProcess,
) -> None:
    make_decisions(strong_gateway)
    exported = exported_names(strong_gateway)
    used = set().union(*(metric_names(expr) for expr in expressions(dashboard())))
    missing = sorted(used - exported)
    assert not missing, f"the dashboard reads metrics that /metrics does not export: {missing}"
