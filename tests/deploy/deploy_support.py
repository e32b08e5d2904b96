"""What the deployment tests share: where deploy/ is, the dashboard, and metric names."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from e2e_support import (
    API_KEY,
    START_TIMEOUT_SECONDS,
    HeliosProcess,
    clean_environment,
    free_ports,
    helios_command,
)
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent.parent
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "helios.json"

# One tenant with a small limit that never refills during a test.
POLICIES = """\
[[policies]]
tenant = "acme"
resource = "*"
limit = 3
window = "1h"
"""

# (resource, calls) against POLICIES: each resource admits 3 and denies the rest.
DECISIONS = (("search", 5), ("upload", 2))
ALLOWED = sum(min(calls, 3) for _, calls in DECISIONS)
DENIED = sum(max(calls - 3, 0) for _, calls in DECISIONS)

# Grafana's interval variables, and what stands in for them outside Grafana.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_METRIC = re.compile(r"\bhelios_[A-Za-z0-9_]+\b")


def start_gateway(directory: Path, settings: Mapping[str, str]) -> HeliosProcess:
    """Start ``helios --role gateway`` with :data:`POLICIES` and wait until it is ready."""
    directory.mkdir(parents=True, exist_ok=True)
    policy_file = directory / "policies.toml"
    policy_file.write_text(POLICIES, encoding="utf-8")
    environment = {
        "HELIOS_HTTP_HOST": "127.0.0.1",
        "HELIOS_METRICS_HOST": "127.0.0.1",
        "HELIOS_ALLOWED_API_KEYS": API_KEY,
        "HELIOS_POLICY_FILE": str(policy_file),
        # As in the demo: the dashboard reads the tenant-labelled metrics.
        "HELIOS_METRICS_TENANT_LABELS": "true",
        **settings,
    }
    # A port taken by someone else between picking and binding: try others.
    for attempt in range(3):
        http_port, metrics_port = free_ports(2)
        log_path = directory / f"helios-{attempt}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                helios_command(
                    "--role",
                    "gateway",
                    "--http-port",
                    str(http_port),
                    "--metrics-port",
                    str(metrics_port),
                ),
                env=clean_environment(environment),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        helios = HeliosProcess(process, http_port, metrics_port, log_path)
        if _wait_ready(helios):
            return helios
        if "Address already in use" not in helios.log():
            break
    raise AssertionError(f"helios did not become ready; log:\n{helios.log()}")


def _wait_ready(helios: HeliosProcess) -> bool:
    """Poll ``/ready`` until it answers 200 (True) or the process exits (False)."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if helios.process.poll() is not None:
                return False
            try:
                if client.get(f"{helios.url}/ready").status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    helios.process.kill()
    helios.process.wait()
    raise AssertionError(
        f"helios was not ready within {START_TIMEOUT_SECONDS} s; log:\n{helios.log()}"
    )


def make_decisions(helios: HeliosProcess) -> tuple[int, int]:
    """Ask for every decision of :data:`DECISIONS`; the numbers allowed and denied."""
    allowed = denied = 0
    with helios.client() as client:
        for resource, calls in DECISIONS:
            for _ in range(calls):
                response = client.get(
                    f"/allow?tenant=acme&resource={resource}", headers={"X-API-Key": API_KEY}
                )
                assert response.status_code in (200, 429), response.text
                if response.status_code == 200:
                    allowed += 1
                else:
                    denied += 1
    assert (allowed, denied) == (ALLOWED, DENIED)
    return allowed, denied


def dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def panels(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    found = []
    for panel in document["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [panel for panel in found if panel.get("type") != "row"]


def expressions(document: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(document) for target in panel["targets"]]


def metric_names(expr: str) -> set[str]:
    """The Helios metric names a PromQL expression reads (label values left out)."""
    return set(_METRIC.findall(_QUOTED.sub('""', expr)))


def promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, for Prometheus itself."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def exported_names(helios: HeliosProcess) -> set[str]:
    """Every series name the process's /metrics declares, with the suffixes a query uses."""
    response = httpx.get(f"{helios.metrics_url}/metrics", timeout=5.0)
    assert response.status_code == 200
    names = set()
    for family in text_string_to_metric_families(response.text):
        names.add(family.name)
        # A family is declared even when it has no sample yet (no Redis error so far).
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        names.update(sample.name for sample in family.samples)
    return names
