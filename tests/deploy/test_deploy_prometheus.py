"""A real Prometheus scraping a real gateway and control plane, and the demo's configuration.

The test starts ``helios --role gateway``, ``helios --role control`` and
``prometheus`` on free loopback ports, with a scrape every second, makes
decisions, then asks Prometheus's HTTP API until the counters it stored equal
the decisions made. Then every query of the Grafana dashboard runs against
it: each must be valid PromQL.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from deploy_support import DEPLOY, dashboard, expressions, make_decisions, promql
from e2e_support import ADMIN_KEY, HeliosProcess, free_ports

pytestmark = pytest.mark.slow

PROMETHEUS = "prometheus"
SCRAPE_INTERVAL = "1s"
START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 10.0
# From the last decision until Prometheus holds its count: a few scrapes.
CONVERGE_TIMEOUT_SECONDS = 10.0


@dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector; fails on any error Prometheus reports."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5.0)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        assert body["data"]["resultType"] == "vector", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The value of a query that yields one series; None while it yields none."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])


def scrape_config(gateway: HeliosProcess, control: HeliosProcess) -> str:
    """Both roles' metrics listeners, under the demo's job names."""
    jobs = [
        ("helios-gateway", [f"127.0.0.1:{gateway.metrics_port}"]),
        ("helios-control", [f"127.0.0.1:{control.metrics_port}"]),
    ]
    lines = [
        "global:",
        f"  scrape_interval: {SCRAPE_INTERVAL}",
        f"  scrape_timeout: {SCRAPE_INTERVAL}",
        "scrape_configs:",
    ]
    for job, targets in jobs:
        lines += [
            f"  - job_name: {job}",
            "    static_configs:",
            f"      - targets: [{', '.join(repr(t) for t in targets)}]",
        ]
    return "\n".join(lines) + "\n"


def start_prometheus(directory: Path, config: str) -> Prometheus:
    """Start Prometheus on a free loopback port and wait until it is ready."""
    executable = shutil.which(PROMETHEUS)
    if executable is None:
        pytest.skip("prometheus is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "prometheus.yml"
    config_path.write_text(config, encoding="utf-8")
    # A port taken between picking and binding: try again on another.
    for attempt in range(3):
        (port,) = free_ports(1)
        log_path = directory / f"prometheus-{attempt}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    executable,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={directory / f'data-{attempt}'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        prometheus = Prometheus(process, port, log_path)
        if _wait_ready(prometheus):
            return prometheus
        if "address already in use" not in prometheus.log():
            break
    raise AssertionError(f"prometheus did not start; log:\n{prometheus.log()}")


def _wait_ready(prometheus: Prometheus) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if prometheus.process.poll() is not None:
            return False
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{prometheus.url}/-/ready", timeout=1.0).status_code == 200:
                return True
        time.sleep(0.1)
    stop_prometheus(prometheus)
    raise AssertionError(
        f"prometheus was not ready within {START_TIMEOUT_SECONDS} s; log:\n{prometheus.log()}"
    )


def stop_prometheus(prometheus: Prometheus) -> None:
    if prometheus.process.poll() is None:
        prometheus.process.send_signal(signal.SIGTERM)
    try:
        prometheus.process.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        prometheus.process.kill()
        prometheus.process.wait()


@contextlib.contextmanager
def running_prometheus(directory: Path, config: str) -> Iterator[Prometheus]:
    prometheus = start_prometheus(directory, config)
    try:
        yield prometheus
    finally:
        stop_prometheus(prometheus)


def wait_for(prometheus: Prometheus, what: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll ``check`` until true; fail after ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"Prometheus did not show {what} within {timeout} s; log:\n{prometheus.log()}"
            )
        time.sleep(0.2)


def test_prometheus_counts_the_decisions_of_a_gateway(
    gateway_factory: Callable[..., HeliosProcess],
    control_factory: Callable[..., HeliosProcess],
    tmp_path: Path,
) -> None:
    gateway = gateway_factory()
    control = control_factory()
    config = scrape_config(gateway, control)
    with running_prometheus(tmp_path / "prometheus", config) as prometheus:
        # The targets are up before any decision: the counts must then move from 0.
        for job in ("helios-gateway", "helios-control"):
            wait_for(
                prometheus,
                f"{job} as an up target",
                lambda job=job: prometheus.value(f'up{{job="{job}"}}') == 1,
                START_TIMEOUT_SECONDS,
            )
        assert prometheus.value('sum(helios_rate_limits_total{result="allowed"})') == 0

        allowed, denied = make_decisions(gateway)

        def counted() -> bool:
            return (
                prometheus.value('sum(helios_rate_limits_total{result="allowed"})') == allowed
                and prometheus.value('sum(helios_rate_limits_total{result="denied"})') == denied
            )

        wait_for(
            prometheus, f"{allowed} allowed and {denied} denied", counted, CONVERGE_TIMEOUT_SECONDS
        )
        assert prometheus.value('sum(helios_rate_limits_total{result="shadow_denied"})') == 0
        # By tenant: one tenant, so its series and "other" hold every decision.
        wait_for(
            prometheus,
            f"{denied} denied by tenant",
            lambda: (
                prometheus.value('sum(helios_tenant_rate_limits_total{result="denied"})') == denied
            ),
            CONVERGE_TIMEOUT_SECONDS,
        )
        assert prometheus.value('sum(helios_requests_total{route="/allow",code="429"})') == float(
            denied
        )

        # Every query of the dashboard is valid PromQL for a real Prometheus, and
        # the rate of decisions, which a FAST gateway feeds, returns data.
        queries = [promql(expr) for expr in expressions(dashboard())]
        for query in queries:
            prometheus.query(query)
        (decision_rate,) = [query for query in queries if "rate(helios_rate_limits_total[" in query]
        wait_for(
            prometheus,
            "a rate of decisions on the dashboard",
            lambda: bool(prometheus.query(decision_rate)),
            CONVERGE_TIMEOUT_SECONDS,
        )
        revisions = prometheus.query("max by (instance) (helios_policy_revision)")
        assert [series["metric"]["instance"] for series in revisions] == [
            f"127.0.0.1:{gateway.metrics_port}"
        ]

        # The control plane: its store, and its requests by route.
        assert prometheus.value('helios_control_store_up{job="helios-control"}') == 1
        with httpx.Client(base_url=control.control_url, timeout=5.0) as admin:
            for _ in range(3):
                listed = admin.get("/v1/tenants", headers={"X-API-Key": ADMIN_KEY})
                assert listed.status_code == 200
        wait_for(
            prometheus,
            "the control plane's requests",
            lambda: (
                prometheus.value(
                    'sum(helios_control_requests_total{route="/v1/tenants",code="200"})'
                )
                == 3
            ),
            CONVERGE_TIMEOUT_SECONDS,
        )


def test_the_demo_configuration_is_valid_for_prometheus(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (installed with prometheus) is not installed")
    result = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
