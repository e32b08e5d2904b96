"""STRONG mode on a real three-master Redis Cluster, through a resharding.

Buckets are spread so that every master holds some; each is exact. Then the
slot of a live bucket moves to another master while requests keep coming
(``CLUSTER SETSLOT ... IMPORTING / MIGRATING``, ``MIGRATE``, ``SETSLOT ...
NODE``): the bucket continues where it was, exactly the limit is admitted
over the whole run, and no request fails (no CROSSSLOT, no 5xx).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter

import pytest
import trio
from redis_servers import RedisClusterServers, RedisServer
from strong_support import (
    Answer,
    GatewayFactory,
    allow,
    clear_of_window_end,
    client,
    gather,
    key_slot,
)

from helios.backends.redis.strong import hash_tag

pytestmark = pytest.mark.slow

POLICIES = """
[[policies]]
tenant = "spread*"
resource = "*"
algorithm = "token_bucket"
limit = 20
window = "1h"

[[policies]]
tenant = "live"
resource = "*"
algorithm = "fixed_window"
failure_mode = "closed"
bands = [{ limit = 100, window = "1h" }, { limit = 1000, window = "1d" }]
"""

SPREAD_LIMIT = 20
LIVE_LIMIT = 100
TOTAL_REQUESTS = 150


def all_keys(cluster: RedisClusterServers) -> dict[str, int]:
    """Every Helios key in the cluster and the port of the master holding it."""
    found = {}
    for node in cluster.nodes:
        with node.client() as redis:
            for key in redis.scan_iter("helios:*", count=1000):
                found[key.decode()] = node.port
    return found


def spread_tenants(cluster: RedisClusterServers, per_master: int) -> dict[str, int]:
    """Tenants ``spreadN`` whose buckets (resource ``r``) land ``per_master`` on each master.

    The slot is predicted from the bucket's hash tag; the test checks where
    the keys really are.
    """
    chosen: dict[str, int] = {}
    counts: Counter[int] = Counter()
    for number in itertools.count():
        tenant = f"spread{number}"
        port = cluster.master_of_slot(key_slot(cluster.nodes[0], "{" + hash_tag(tenant, "r") + "}"))
        if counts[port] < per_master:
            chosen[tenant] = port
            counts[port] += 1
        if len(chosen) == per_master * len(cluster.nodes):
            return chosen
    raise AssertionError("unreachable")


def asking_calls(node: RedisServer) -> int:
    """How many ASKING commands the node has served (a client following ASK sends one)."""
    with node.client() as redis:
        stats = redis.info("commandstats")
    return int(stats.get("cmdstat_asking", {}).get("calls", 0))


def move_slot(
    cluster: RedisClusterServers, slot: int, pause: float, moved: trio.Event | None = None
) -> tuple[int, int]:
    """Migrate ``slot`` to another master the way ``redis-cli --cluster reshard`` does.

    Pauses ``pause`` s in the two in-between states (importing/migrating, then
    keys moved but the slot not yet reassigned) so that requests see both.
    Returns (source port, target port).
    """
    ids = cluster.node_ids()
    source = cluster.node(cluster.master_of_slot(slot))
    target = next(node for node in cluster.nodes if node is not source)
    others = [node for node in cluster.nodes if node not in (source, target)]
    target.execute("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])
    source.execute("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port])
    time.sleep(pause)
    keys = source.execute("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    assert isinstance(keys, list) and keys
    source.execute("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
    time.sleep(pause)
    for node in (target, source, *others):
        node.execute("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])
    return source.port, target.port


async def test_buckets_on_every_master_are_exact(
    redis_cluster: RedisClusterServers, gateway_factory: GatewayFactory
) -> None:
    helios = gateway_factory(POLICIES, redis_url=redis_cluster.url)
    tenants = spread_tenants(redis_cluster, per_master=3)
    requests = [tenant for tenant in tenants for _ in range(30)]

    async with client(helios) as http:
        answers = await gather(lambda tenant: allow(http, tenant, "r"), requests, concurrency=30)

    assert {answer.status for answer in answers} == {200, 429}, Counter(a.status for a in answers)
    assert {answer.mode for answer in answers} == {"strong"}
    for tenant in tenants:
        mine = [a for t, a in zip(requests, answers, strict=True) if t == tenant]
        remaining = sorted(a.remaining for a in mine if a.allowed)
        assert remaining == list(range(SPREAD_LIMIT)), tenant

    # Each bucket's key is on the master predicted, so all three hold some.
    keys = {key: port for key, port in all_keys(redis_cluster).items() if "spread" in key}
    assert len(keys) == len(tenants)
    assert sorted(keys.values()) == sorted(tenants.values())
    assert len(set(keys.values())) == 3
    for key, port in keys.items():
        assert redis_cluster.master_of_slot(key_slot(redis_cluster.nodes[0], key)) == port


async def test_resharding_a_live_bucket_changes_no_decision(
    redis_cluster: RedisClusterServers, gateway_factory: GatewayFactory
) -> None:
    helios = gateway_factory(POLICIES, redis_url=redis_cluster.url)
    await clear_of_window_end(redis_cluster.nodes[0], 3600, margin=15)
    answers: list[Answer] = []
    migrated = trio.Event()
    start_migration = trio.Event()

    async with client(helios) as http:
        existing = all_keys(redis_cluster)
        first = await allow(http, "live", "bucket")
        answers.append(first)
        assert (first.status, first.remaining) == (200, LIVE_LIMIT - 1)
        keys = [key for key in all_keys(redis_cluster) if key not in existing]
        assert len(keys) == 2, keys
        slots = {key_slot(redis_cluster.nodes[0], key) for key in keys}
        assert len(slots) == 1, "both bands in one slot"
        (slot,) = slots
        asking_before = {node.port: asking_calls(node) for node in redis_cluster.nodes}

        async def worker() -> None:
            # Until the migration is over and 150 requests have been answered:
            # well past the limit of 100.
            while not (migrated.is_set() and len(answers) >= TOTAL_REQUESTS):
                answers.append(await allow(http, "live", "bucket"))
                if len(answers) >= 25:
                    start_migration.set()
                await trio.sleep(0.02)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(worker)
                await start_migration.wait()
                begun = len(answers)
                source, target = await trio.to_thread.run_sync(move_slot, redis_cluster, slot, 0.1)
                ended = len(answers)
                migrated.set()

    # Requests were decided before, during and after the move, and the
    # bucket was still admitting after it: the move happened mid-load.
    assert all(answer.allowed for answer in answers[:begun])
    assert any(answer.allowed for answer in answers[ended:])
    assert ended - begun >= 10, (begun, ended)
    statuses = Counter(answer.status for answer in answers)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[200] == LIVE_LIMIT
    assert len(answers) >= TOTAL_REQUESTS
    assert {answer.mode for answer in answers} == {"strong"}
    assert sorted(a.remaining for a in answers if a.allowed) == list(range(LIVE_LIMIT))
    # The bucket lives on the new master now, both bands of it.
    assert redis_cluster.node(target).execute("CLUSTER", "COUNTKEYSINSLOT", slot) == 2
    assert redis_cluster.node(source).execute("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    assert redis_cluster.master_of_slot(slot) == target
    # While the keys had moved but the slot had not, the gateway followed ASK.
    assert asking_calls(redis_cluster.node(target)) > asking_before[target]
    assert "CROSSSLOT" not in helios.log()
