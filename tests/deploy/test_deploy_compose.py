"""The compose demo, checked as a document: pinned images, limits, health checks, secrets.

There is no Docker engine where these tests run. What can run for real does:
the environment each Helios service gets is handed to ``helios --print-config``,
so a misspelt setting fails here exactly as it would fail in the container.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from deploy_support import DASHBOARD, DEPLOY, REPO, dashboard

import helios

yaml = pytest.importorskip(
    "yaml", reason="PyYAML is not installed: the compose checks need a YAML parser"
)

COMPOSE = DEPLOY / "docker-compose.yml"
HELIOS_SERVICES = {
    "helios-gateway": ("gateway", [8080, 9080, 2112]),
    "helios-control": ("control", [8081, 9081, 2113]),
}
SERVICES = {*HELIOS_SERVICES, "redis", "etcd", "prometheus", "grafana", "jaeger"}
# An exact version: 7.2.5, v3.5.14, 3.11.9-slim-bookworm, 7.2.5-alpine.
VERSION_TAG = re.compile(r"v?\d+\.\d+\.\d+(-[a-z0-9.]+)*")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    document = load(COMPOSE)
    found: dict[str, dict[str, Any]] = document["services"]
    return found


def image_tag(image: str) -> str:
    """The tag of ``[registry[:port]/]name:tag``; empty without one."""
    last = image.rsplit("/", 1)[-1]
    return last.partition(":")[2]


def test_the_demo_has_every_service(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == SERVICES


def test_every_image_is_pinned_to_a_version(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image", "")
        assert image, f"{name} names its image"
        assert "@sha256:" in image or VERSION_TAG.fullmatch(image_tag(image)), (
            f"{name}: {image!r} is not pinned to a version"
        )
        assert image_tag(image) != "latest"


def test_helios_is_built_from_this_repository(services: dict[str, dict[str, Any]]) -> None:
    for name in HELIOS_SERVICES:
        service = services[name]
        # Tagged with the version being built, so that a release bump shows up here.
        assert service["image"] == f"helios:{helios.__version__}", name
        build = service["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == REPO
        assert (REPO / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


def test_redis_and_etcd_publish_no_port(services: dict[str, dict[str, Any]]) -> None:
    for name in ("redis", "etcd"):
        assert "ports" not in services[name], name
        assert services[name].get("network_mode") != "host", name


def test_published_ports_are_on_loopback(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)


def test_helios_publishes_its_listeners(services: dict[str, dict[str, Any]]) -> None:
    for name, (_, ports) in HELIOS_SERVICES.items():
        published = [int(port.rsplit(":", 1)[1]) for port in services[name]["ports"]]
        assert published == ports, name


def test_every_service_has_resource_limits(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        cpus = limits.get("cpus", service.get("cpus"))
        memory = limits.get("memory", service.get("mem_limit"))
        assert cpus and float(cpus) > 0, f"{name} has a CPU limit"
        assert memory and re.fullmatch(r"\d+[kKmMgG]", str(memory)), f"{name} has a memory limit"


def test_every_service_has_a_health_check(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has a health check"
        assert not service["healthcheck"].get("disable"), name


def test_helios_health_checks_ask_ready(services: dict[str, dict[str, Any]]) -> None:
    for name, (_, ports) in HELIOS_SERVICES.items():
        command = " ".join(services[name]["healthcheck"]["test"][1:])
        assert f"http://127.0.0.1:{ports[0]}/ready" in command, name
        # The slim image has Python, not curl or wget.
        assert services[name]["healthcheck"]["test"][1] == "python", name


def test_dependencies_wait_for_health(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            assert condition["condition"] in ("service_healthy", "service_started")
    must_be_healthy = {
        "helios-gateway": {"redis", "etcd"},
        "helios-control": {"etcd"},
        "grafana": {"prometheus"},
    }
    for name, dependencies in must_be_healthy.items():
        for dependency in dependencies:
            condition = services[name]["depends_on"][dependency]["condition"]
            assert condition == "service_healthy", (name, dependency)


def test_grafana_credentials_come_from_the_ignored_env_file(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    files = grafana["env_file"]
    files = [files] if isinstance(files, str) else files
    paths = [(COMPOSE.parent / entry).resolve() for entry in files]
    assert DEPLOY / ".env.grafana" in paths
    environment = grafana.get("environment", {})
    assert not any(key.startswith("GF_SECURITY_ADMIN") for key in environment)
    assert environment.get("GF_AUTH_ANONYMOUS_ENABLED") == "false"


def test_the_gateway_decides_in_redis_and_watches_etcd(
    services: dict[str, dict[str, Any]],
) -> None:
    environment = services["helios-gateway"]["environment"]
    assert environment["HELIOS_GATEWAY_MODE"] == "strong"
    assert environment["HELIOS_REDIS_URL"].startswith("redis://redis:6379")
    assert environment["HELIOS_ETCD_ENDPOINTS"] == "http://etcd:2379"
    for setting in ("HELIOS_HTTP_HOST", "HELIOS_GRPC_HOST", "HELIOS_METRICS_HOST"):
        assert environment[setting] == "0.0.0.0", setting
    control = services["helios-control"]["environment"]
    assert control["HELIOS_ETCD_ENDPOINTS"] == "http://etcd:2379"
    for setting in (
        "HELIOS_CONTROL_HTTP_HOST",
        "HELIOS_CONTROL_GRPC_HOST",
        "HELIOS_CONTROL_METRICS_HOST",
    ):
        assert control[setting] == "0.0.0.0", setting


def test_helios_sends_traces_to_jaeger(services: dict[str, dict[str, Any]]) -> None:
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    for name in HELIOS_SERVICES:
        environment = services[name]["environment"]
        assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        assert environment["OTEL_SERVICE_NAME"] == name


def test_helios_accepts_the_compose_environment(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """Each Helios service's command and environment, given to the real configuration."""
    expected = {
        "helios-gateway": {
            "role": "'gateway'",
            "gateway.mode": "'strong'",
            "redis.url": "'redis://redis:6379/0'",
            "store.etcd_endpoints": "['http://etcd:2379']",
            "http.host": "'0.0.0.0'",
            "metrics.host": "'0.0.0.0'",
            "grpc.host": "'0.0.0.0'",
        },
        "helios-control": {
            "role": "'control'",
            "store.etcd_endpoints": "['http://etcd:2379']",
            "control.http_host": "'0.0.0.0'",
            "control.grpc_host": "'0.0.0.0'",
            "control.metrics_host": "'0.0.0.0'",
        },
    }
    for name, settings in expected.items():
        service = services[name]
        environment = {key: str(value) for key, value in service["environment"].items()}
        environment["PATH"] = "/usr/bin:/bin"
        result = subprocess.run(
            [sys.executable, "-m", "helios", *service["command"], "--print-config"],
            env=environment,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, f"{name}: {result.stderr}"
        printed = dict(line.split(" = ", 1) for line in result.stdout.splitlines() if " = " in line)
        for setting, value in settings.items():
            assert printed[setting] == value, (name, setting)


def test_prometheus_scrapes_both_roles(services: dict[str, dict[str, Any]]) -> None:
    mounts = services["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    config = load(DEPLOY / "prometheus" / "prometheus.yml")
    targets = {
        job["job_name"]: [t for group in job["static_configs"] for t in group["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets["helios-gateway"] == ["helios-gateway:2112"]
    assert targets["helios-control"] == ["helios-control:2113"]


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(
    services: dict[str, dict[str, Any]],
) -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    mounts = {
        mount.split(":")[1]: (COMPOSE.parent / mount.split(":")[0]).resolve()
        for mount in services["grafana"]["volumes"]
        if mount.startswith("./")
    }
    assert mounts["/etc/grafana/provisioning"] == provisioning

    (datasource,) = load(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"

    (provider,) = load(provisioning / "dashboards" / "helios.yml")["providers"]
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent

    # Every panel and query of the dashboard uses the provisioned datasource.
    document = dashboard()
    for panel in document["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
