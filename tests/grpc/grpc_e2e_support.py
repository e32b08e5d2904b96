"""Real ``helios`` processes driven over gRPC: launchers and client helpers.

The launchers are those of the end-to-end and Redis tests (``start_helios``
in ``tests/e2e/e2e_support.py``, ``start_server`` in
``tests/redis/redis_servers.py``); both directories are put on ``sys.path``
here, as ``tests/strong/conftest.py`` does. Each process gets an explicit free
gRPC port (``clean_environment`` would otherwise ask for port 0, which the
test could not learn).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

_TESTS = Path(__file__).resolve().parent.parent
for _directory in (_TESTS / "e2e", _TESTS / "redis"):
    if str(_directory) not in sys.path:
        sys.path.insert(0, str(_directory))

from e2e_support import (  # noqa: E402
    API_KEY,
    HeliosProcess,
    assert_stopped_cleanly,
    free_ports,
    start_helios,
)
from redis_servers import RedisServer, require_redis_server, start_server  # noqa: E402

__all__ = [
    "API_KEY",
    "BEARER",
    "KEY",
    "GrpcHelios",
    "GrpcHeliosFactory",
    "HeliosProcess",
    "RedisServer",
    "assert_stopped_cleanly",
    "free_ports",
    "grpc_helios_fixture",
    "redis_fixture",
    "redis_server",
    "stalled",
    "start_helios",
]

KEY = (("x-api-key", API_KEY),)
BEARER = (("authorization", f"Bearer {API_KEY}"),)


class GrpcHelios:
    """A running ``helios`` process and its gRPC address."""

    def __init__(self, helios: HeliosProcess, grpc_host: str, grpc_port: int) -> None:
        self.helios = helios
        self.grpc_host = grpc_host
        self.grpc_port = grpc_port

    @property
    def target(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"

    def http_quota(self, tenant: str, resource: str) -> dict[str, Any]:
        with self.helios.client() as client:
            response = client.get(
                f"/api/v1/quota/{tenant}",
                params={"resource": resource},
                headers={"X-API-Key": API_KEY},
            )
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        response = httpx.get(f"{self.helios.metrics_url}/metrics", timeout=5.0)
        assert response.status_code == 200
        total = 0.0
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total


class GrpcHeliosFactory(Protocol):
    def __call__(
        self,
        policies: str,
        *,
        settings: dict[str, str] | None = None,
        tls: tuple[Path, Path] | None = None,
        host: str = "127.0.0.1",
        redis_url: str | None = None,
    ) -> GrpcHelios: ...


@pytest.fixture(name="grpc_helios")
def grpc_helios_fixture(tmp_path: Path) -> Iterator[GrpcHeliosFactory]:
    """Starts ``helios`` processes serving gRPC; each must exit 0 on SIGTERM, no traceback."""
    started: list[GrpcHelios] = []

    def start(
        policies: str,
        *,
        settings: dict[str, str] | None = None,
        tls: tuple[Path, Path] | None = None,
        host: str = "127.0.0.1",
        redis_url: str | None = None,
    ) -> GrpcHelios:
        (port,) = free_ports(1)
        environment = {"HELIOS_GRPC_HOST": host, "HELIOS_GRPC_PORT": str(port)}
        if redis_url is not None:
            environment.update(
                GATEWAY_CONSISTENCY_MODE="strong",
                HELIOS_REDIS_URL=redis_url,
                HELIOS_REDIS_TIMEOUT_MS="200",
            )
        environment.update(settings or {})
        helios = start_helios(
            tmp_path / f"helios-{len(started)}",
            settings=environment,
            policies=policies,
            tls=tls,
        )
        process = GrpcHelios(helios, host, port)
        started.append(process)
        return process

    yield start

    codes = [(process.helios, process.helios.stop()) for process in started]
    for helios, code in codes:
        assert_stopped_cleanly(helios, code)


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    """One empty ``redis-server`` in ``directory``, stopped (and continued first) at the end."""
    require_redis_server()
    server = start_server(directory)
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


@pytest.fixture(name="redis")
def redis_fixture(tmp_path: Path) -> Iterator[RedisServer]:
    """One empty ``redis-server`` for a test (see :func:`redis_server`)."""
    with redis_server(tmp_path / "redis") as server:
        yield server


@contextlib.contextmanager
def stalled(server: RedisServer) -> Iterator[None]:
    """``redis-server`` stopped with SIGSTOP for the block; always SIGCONT after."""
    assert server.process is not None
    pid = server.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
