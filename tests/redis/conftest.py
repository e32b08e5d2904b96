"""Fixtures that start real Redis servers (see ``redis_servers.py``) and stop them afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis_servers import (
    RedisClusterServers,
    RedisServer,
    SentinelServers,
    require_redis_server,
    start_cluster,
    start_sentinel,
    start_server,
    stop_all,
)


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Starts fresh servers (keyword arguments of ``start_server``); all stop at teardown."""
    require_redis_server()
    started: list[RedisServer] = []

    def start(**options: object) -> RedisServer:
        server = start_server(tmp_path / f"redis-{len(started)}", **options)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    stop_all(started)


@pytest.fixture
def redis_server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """One fresh, empty ``redis-server`` on a free loopback port."""
    return redis_server_factory()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A three-master Redis Cluster, shared by the tests of one module."""
    require_redis_server()
    cluster = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_sentinel(tmp_path: Path) -> Iterator[SentinelServers]:
    """A master, its replica and a sentinel watching them as ``mymaster``."""
    require_redis_server()
    servers = start_sentinel(tmp_path / "sentinel")
    yield servers
    servers.stop()
