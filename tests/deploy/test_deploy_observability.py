"""docs/observability.md lists exactly the metric families the real processes export.

A STRONG-mode gateway (Redis's metrics too) with tenant labels on, and a
control plane, are scraped after some decisions; every family either /metrics
page declares must be in the catalogue, and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest
from deploy_support import REPO, make_decisions
from e2e_support import HeliosProcess
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow

DOC = REPO / "docs" / "observability.md"
_ROW = re.compile(r"^\| `(helios_[a-z0-9_]+)` \|", re.MULTILINE)


def documented() -> set[str]:
    """The metrics in the first column of the tables of the Metrics section."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    return set(_ROW.findall(section))


def exported(url: str) -> set[str]:
    """Family names as a query uses them: counters with ``_total``."""
    response = httpx.get(f"{url}/metrics", timeout=5.0)
    assert response.status_code == 200
    return {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in text_string_to_metric_families(response.text)
    }


def test_the_catalogue_lists_every_exported_metric_and_no_other(
    strong_gateway: HeliosProcess, control_factory: Callable[..., HeliosProcess]
) -> None:
    control = control_factory()
    make_decisions(strong_gateway)
    with httpx.Client(base_url=control.control_url, timeout=5.0) as client:
        assert client.get("/health").status_code == 200
    names = exported(strong_gateway.metrics_url) | exported(control.metrics_url)
    assert "helios_tenant_rate_limits_total" in names
    assert "helios_control_requests_total" in names
    listed = documented()
    assert sorted(names - listed) == [], "exported but not in docs/observability.md"
    assert sorted(listed - names) == [], "in docs/observability.md but not exported"
