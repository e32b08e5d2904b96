"""The sentinel client against a real master, replica and sentinel."""

from __future__ import annotations

import pytest
import trio
from redis_servers import SentinelServers

from helios.backends.redis import (
    Address,
    RedisLike,
    RedisSentinel,
    RedisUnavailable,
    Script,
    open_redis,
)

SLOW_MS = 5000.0

# A failover with down-after-milliseconds 1000 completes in a few seconds.
FAILOVER_TIMEOUT_S = 30.0


def sentinel_of(client: RedisLike) -> RedisSentinel:
    assert isinstance(client, RedisSentinel)
    return client


async def test_the_client_follows_the_master_through_a_failover(
    redis_sentinel: SentinelServers,
) -> None:
    old_port = redis_sentinel.master.port
    new_port = redis_sentinel.replica.port
    script = Script("return redis.call('INCR', KEYS[1])")
    async with open_redis(redis_sentinel.url, timeout_ms=SLOW_MS) as client:
        assert await client.evalsha(script, ["counter"], []) == 1
        # Writes reach a replica asynchronously; this one must be there.
        await trio.to_thread.run_sync(redis_sentinel.wait_replicated, "counter")
        assert sentinel_of(client).master_address == Address("127.0.0.1", old_port)

        failover_started = trio.current_time()
        redis_sentinel.sentinel.execute("SENTINEL", "FAILOVER", redis_sentinel.service_name)

        # Calls during the failover may fail (READONLY, lost connections);
        # once it is over, they succeed on the new master without any help.
        with trio.fail_after(FAILOVER_TIMEOUT_S):
            while True:
                try:
                    value = await client.evalsha(script, ["counter"], [], timeout_ms=500)
                except RedisUnavailable:
                    await trio.sleep(0.05)
                    continue
                if sentinel_of(client).master_address == Address("127.0.0.1", new_port):
                    break
                await trio.sleep(0.05)
        # The announcement moved the client, long before the sentinel gets
        # round to demoting the old master (up to 10 s after the failover).
        assert trio.current_time() - failover_started < 8
        assert redis_sentinel.current_master_port() == new_port
        # The counter survived: the replica had every increment.
        assert value >= 2
        assert await client.execute("GET", "counter") == str(value).encode()


async def test_an_unknown_service_is_unavailable(redis_sentinel: SentinelServers) -> None:
    url = f"redis+sentinel://{redis_sentinel.sentinel.address}/nosuchmaster"
    async with open_redis(url, timeout_ms=SLOW_MS) as client:
        with pytest.raises(RedisUnavailable) as caught:
            await client.ping()
        assert "does not know 'nosuchmaster'" in caught.value.message


async def test_the_client_follows_when_the_master_dies(redis_sentinel: SentinelServers) -> None:
    new_port = redis_sentinel.replica.port
    async with open_redis(redis_sentinel.url, timeout_ms=SLOW_MS) as client:
        assert await client.execute("SET", "k", "v") == b"OK"
        await trio.to_thread.run_sync(redis_sentinel.wait_replicated, "k")
        redis_sentinel.master.kill()
        # The sentinel declares the master down after 1 s, then fails over.
        with trio.fail_after(FAILOVER_TIMEOUT_S):
            while True:
                try:
                    assert await client.execute("GET", "k", timeout_ms=500) == b"v"
                    if sentinel_of(client).master_address == Address("127.0.0.1", new_port):
                        break
                except RedisUnavailable:
                    pass
                await trio.sleep(0.05)
        assert await client.execute("SET", "k", "w") == b"OK"
