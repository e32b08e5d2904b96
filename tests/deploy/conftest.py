"""Fixtures of the deployment tests: real ``helios`` gateways for the dashboard and Prometheus.

The gateway starts as in the end-to-end tests (``tests/e2e/e2e_support.py``),
with ``--role gateway``; Redis servers come from ``tests/redis/redis_servers.py``.
Both directories are put on ``sys.path`` here so that their modules import by
file name, as they do in their own directories.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent.parent
for _directory in (_TESTS / "e2e", _TESTS / "redis"):
    if str(_directory) not in sys.path:
        sys.path.insert(0, str(_directory))

from deploy_support import start_gateway  # noqa: E402
from e2e_support import (  # noqa: E402
    HeliosProcess,
    assert_stopped_cleanly,
    free_ports,
    start_helios,
)
from redis_servers import (  # noqa: E402
    RedisServer,
    redis_server_factory,  # noqa: F401 - a fixture, found by pytest by name
)


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., HeliosProcess]]:
    """Starts ``helios --role gateway`` (see ``start_gateway``); each must exit 0 on SIGTERM.

    ``start(redis_url=URL)`` runs it in STRONG mode on that Redis; without it, FAST.
    """
    started: list[HeliosProcess] = []

    def start(*, redis_url: str | None = None) -> HeliosProcess:
        settings = {}
        if redis_url is not None:
            settings = {"HELIOS_GATEWAY_MODE": "strong", "HELIOS_REDIS_URL": redis_url}
        helios = start_gateway(tmp_path / f"helios-{len(started)}", settings)
        started.append(helios)
        return helios

    yield start

    codes = [(helios, helios.stop()) for helios in started]
    for helios, code in codes:
        assert_stopped_cleanly(helios, code)


@pytest.fixture
def control_factory(tmp_path: Path) -> Iterator[Callable[..., HeliosProcess]]:
    """Starts ``helios --role control``, its metrics on ``metrics_port``; each must exit 0."""
    started: list[HeliosProcess] = []

    def start() -> HeliosProcess:
        (metrics_port,) = free_ports(1)
        helios = start_helios(
            tmp_path / f"control-{len(started)}",
            role="control",
            settings={"HELIOS_CONTROL_METRICS_PORT": str(metrics_port)},
        )
        # The control role has no gateway metrics: its metrics port is the control plane's.
        helios.metrics_port = metrics_port
        started.append(helios)
        return helios

    yield start

    codes = [(helios, helios.stop()) for helios in started]
    for helios, code in codes:
        assert_stopped_cleanly(helios, code)


@pytest.fixture
def strong_gateway(
    gateway_factory: Callable[..., HeliosProcess],
    redis_server_factory: Callable[..., RedisServer],  # noqa: F811 - the fixture
) -> HeliosProcess:
    """A STRONG-mode gateway on a fresh Redis: it exports the backend's metrics too.

    Skipped when ``redis-server`` is not installed.
    """
    return gateway_factory(redis_url=redis_server_factory().url)
