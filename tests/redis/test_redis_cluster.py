"""The cluster client against a real three-master Redis Cluster."""

from __future__ import annotations

import random
from functools import partial

import pytest
import trio
from redis_servers import RedisClusterServers

from helios.backends.redis import (
    RedisCluster,
    RedisCommandError,
    RedisLike,
    Script,
    key_slot,
    open_redis,
)

SLOW_MS = 5000.0

COUNTER_SCRIPT = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")

KEYS = [
    "plain",
    "user:1000:session",
    "{user1000}.following",
    "{user1000}.followers",
    "foo{}{bar}",
    "foo{{bar}}zap",
    "foo{bar}{zap}",
    "{",
    "}",
    "{}",
    "}{",
    "a}{b}",
    "with spaces in it",
    "{with spaces} in the tag",
    "tenant:a:b:c",
    "3:a:bc",
    "ünïcödé",
    "{日本語}:counter",
    "emoji 🚦 key",
    "",
]


def cluster_of(client: RedisLike) -> RedisCluster:
    assert isinstance(client, RedisCluster)
    return client


async def test_the_slot_function_equals_cluster_keyslot(redis_cluster: RedisClusterServers) -> None:
    async with open_redis(redis_cluster.url, timeout_ms=SLOW_MS) as client:
        for key in [*KEYS, *(f"random:{random.random()}" for _ in range(200))]:
            assert await client.execute("CLUSTER", "KEYSLOT", key) == key_slot(key), key
        binary = bytes(range(256))
        assert await client.execute("CLUSTER", "KEYSLOT", binary) == key_slot(binary)


async def test_keys_spread_over_every_master(redis_cluster: RedisClusterServers) -> None:
    async with open_redis(redis_cluster.url, timeout_ms=SLOW_MS) as client:
        async with trio.open_nursery() as nursery:
            for i in range(3000):
                nursery.start_soon(partial(client.execute, "SET", f"spread:{i}", i))

        values: dict[int, bytes] = {}

        async def read(i: int) -> None:
            values[i] = await client.execute("GET", f"spread:{i}")

        async with trio.open_nursery() as nursery:
            for i in range(3000):
                nursery.start_soon(read, i)
        assert values == {i: str(i).encode() for i in range(3000)}
        await client.ping()
        statistics = client.statistics()
        assert statistics.errors == 0
        assert cluster_of(client).cluster_statistics().nodes == 3

    held = []
    for node in redis_cluster.nodes:
        with node.client() as check:
            held.append(sum(1 for _ in check.scan_iter(match="spread:*", count=1000)))
    assert sum(held) == 3000
    assert all(count > 500 for count in held), held


async def test_evalsha_routes_by_the_first_key_and_reloads_scripts(
    redis_cluster: RedisClusterServers,
) -> None:
    async with open_redis(redis_cluster.url, timeout_ms=SLOW_MS) as client:
        for _ in range(2):
            async with trio.open_nursery() as nursery:
                for i in range(300):
                    nursery.start_soon(
                        partial(client.evalsha, COUNTER_SCRIPT, [f"{{tenant{i}}}:n"], [i])
                    )
            for node in redis_cluster.nodes:
                node.execute("SCRIPT", "FLUSH")
        assert await client.execute("GET", "{tenant7}:n") == b"14"
        assert client.statistics().errors == 0

        with pytest.raises(RedisCommandError) as caught:
            await client.evalsha(
                Script("return redis.call('GET', KEYS[2])"), ["{a}:1", "{b}:2"], []
            )
        assert "cross" in caught.value.server_message.lower()


async def test_a_slot_migrated_under_traffic_fails_no_call(
    redis_cluster: RedisClusterServers,
) -> None:
    tag = "{migrating}"
    slot = key_slot(tag)
    keys = [f"{tag}:{i}" for i in range(50)]
    ids = redis_cluster.node_ids()
    source_port = redis_cluster.master_of_slot(slot)
    target_port = next(port for port in ids if port != source_port)
    source, target = redis_cluster.node(source_port), redis_cluster.node(target_port)

    async def admin(server_port: int, *args: object) -> object:
        return await trio.to_thread.run_sync(redis_cluster.node(server_port).execute, *args)

    successes = dict.fromkeys(keys, 0)
    async with open_redis(redis_cluster.url, timeout_ms=2000) as client:
        for key in keys:
            await client.execute("SET", key, 0)
            successes[key] = 0
        stop = trio.Event()

        async def traffic() -> None:
            while not stop.is_set():
                key = random.choice(keys)
                await client.execute("INCR", key)
                successes[key] += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(traffic)
            await trio.sleep(0.05)

            await admin(target_port, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source_port])
            await admin(source_port, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target_port])
            while True:
                batch = await admin(source_port, "CLUSTER", "GETKEYSINSLOT", slot, 10)
                assert isinstance(batch, list)
                if not batch:
                    break
                await admin(
                    source_port, "MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *batch
                )
                # Let the traffic meet the half-migrated slot: ASK redirections.
                await trio.sleep(0.03)
            for port in (
                target_port,
                source_port,
                *(p for p in ids if p not in (source_port, target_port)),
            ):
                await admin(port, "CLUSTER", "SETSLOT", slot, "NODE", ids[target_port])
            # The client's table still names the source: MOVED redirections.
            await trio.sleep(0.2)
            stop.set()

        statistics = cluster_of(client).cluster_statistics()
        assert statistics.ask > 0
        assert statistics.moved > 0
        assert client.statistics().errors == 0
        for key in keys:
            assert await client.execute("GET", key) == str(successes[key]).encode()

    assert redis_cluster.master_of_slot(slot) == target_port
    with source.client() as check:
        assert check.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    with target.client() as check:
        assert check.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == len(keys)
