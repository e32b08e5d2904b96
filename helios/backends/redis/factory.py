"""Open the right Redis client for a URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from helios.backends.redis.client import ClientOptions, Redis, RedisLike
from helios.backends.redis.cluster import RedisCluster
from helios.backends.redis.sentinel import RedisSentinel
from helios.backends.redis.url import RedisTarget, parse_redis_url


def client_for(target: RedisTarget, nursery: trio.Nursery, options: ClientOptions) -> RedisLike:
    """A client of ``target`` whose background tasks run in ``nursery``."""
    if target.kind == "cluster":
        return RedisCluster(target.addresses, nursery, settings=target.settings, options=options)
    if target.kind == "sentinel":
        assert target.service_name is not None
        return RedisSentinel(
            target.addresses,
            target.service_name,
            nursery,
            settings=target.settings,
            sentinel_settings=target.sentinel_settings,
            options=options,
        )
    return Redis(target.addresses[0], nursery, settings=target.settings, options=options)


@asynccontextmanager
async def open_redis(
    url: str,
    *,
    timeout_ms: float = 50.0,
    pool_size: int = 4,
    options: ClientOptions | None = None,
) -> AsyncIterator[RedisLike]:
    """A client of the Redis that ``url`` names, closed on exit.

    ``url`` takes any form of :mod:`helios.backends.redis.url`. Nothing is
    connected up front: the first call connects, and a URL naming an
    unreachable server fails calls, not the opening. ``options``, when given,
    overrides ``timeout_ms`` and ``pool_size``.
    """
    target = parse_redis_url(url)
    if options is None:
        options = ClientOptions(timeout_ms=timeout_ms, pool_size=pool_size)
    async with trio.open_nursery() as nursery:
        client = client_for(target, nursery, options)
        try:
            yield client
        finally:
            await client.aclose()
