"""Fixtures of the STRONG-mode tests: real ``helios`` gateways deciding in real Redis.

The launchers are those of the end-to-end and Redis tests: ``start_helios``
(``tests/e2e/e2e_support.py``) and ``start_server`` / ``start_cluster`` /
``start_sentinel`` (``tests/redis/redis_servers.py``). Both directories are put
on ``sys.path`` here so that their modules import by file name, as they do in
their own directories.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent.parent
for _directory in (_TESTS / "e2e", _TESTS / "redis"):
    if str(_directory) not in sys.path:
        sys.path.insert(0, str(_directory))

from e2e_support import HeliosProcess, assert_stopped_cleanly, start_helios  # noqa: E402
from redis_servers import (  # noqa: E402, F401 - fixtures, found by pytest by name
    redis_cluster,
    redis_sentinel,
    redis_server,
    redis_server_factory,
)
from strong_support import GatewayFactory  # noqa: E402


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[GatewayFactory]:
    """Starts ``helios`` processes; each must exit 0 on SIGTERM without a traceback.

    ``start(policies, redis_url=URL, settings={...})`` starts one in STRONG mode
    on ``redis_url`` (50 ms timeout unless ``settings`` says otherwise);
    without ``redis_url`` it runs in FAST mode. ``settings`` is extra
    environment for the process.
    """
    started: list[HeliosProcess] = []

    def start(
        policies: str,
        *,
        redis_url: str | None = None,
        settings: dict[str, str] | None = None,
    ) -> HeliosProcess:
        environment: dict[str, str] = {}
        if redis_url is not None:
            environment.update(
                GATEWAY_CONSISTENCY_MODE="strong",
                HELIOS_REDIS_URL=redis_url,
                HELIOS_REDIS_TIMEOUT_MS="50",
            )
        environment.update(settings or {})
        helios = start_helios(
            tmp_path / f"helios-{len(started)}", settings=environment, policies=policies
        )
        started.append(helios)
        return helios

    yield start

    codes = [(helios, helios.stop()) for helios in started]
    for helios, code in codes:
        assert_stopped_cleanly(helios, code)
