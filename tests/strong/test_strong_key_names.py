"""Tenant and resource names with any characters: one slot per bucket, no collisions.

On the real cluster, each bucket of a two-band policy is charged once, in
turn: exactly two new keys must appear (so it shared no key with any earlier
bucket), both in one hash slot on one master (so the script never sees
CROSSSLOT). At the end each bucket still shows only its own spending.
"""

from __future__ import annotations

import pytest
from redis_servers import RedisClusterServers
from strong_support import GatewayFactory, allow, clear_of_window_end, client, key_slot, quota

pytestmark = pytest.mark.slow

POLICIES = """
[[policies]]
tenant = "*"
resource = "*"
algorithm = "fixed_window"
bands = [{ limit = 10, window = "1h" }, { limit = 100, window = "1d" }]
"""

# Pairs that would share a counter under a careless encoding: the split
# between tenant and resource, the hash tag's braces, and the escape itself.
BUCKETS = [
    ("a}", "b"),
    ("a", "}b"),
    ("a:b", "c"),
    ("a", "b:c"),
    ("{x}", "y"),
    ("{x", "}y"),
    ("x", "%7D"),
    ("x", "}"),
    ("x", "%257D"),
    ("a%7D", "b"),
    ("a%", "25b"),
    ("a%25", "b"),
    ("a b", "c d"),
    ("a", "b c d"),
    ("a b c", "d"),
    ("ü", "ñé"),
    ("üñ", "é"),
    ("名前", "資源"),
    ("名", "前資源"),
    ("{", "}"),
    ("}", "{"),
    ("{}", "{}"),
    ("}{", "}{"),
    ("1:a", "b"),
    ("3:1:ab", "c"),
    ("%", "%"),
    ("%%", "%"),
    (" ", " "),
    ("Ωmega {tag} 50%", "res:{ource} 💡"),
]


def all_keys(cluster: RedisClusterServers) -> dict[bytes, int]:
    """Every Helios key in the cluster (as bytes) and the port of the master holding it."""
    found = {}
    for node in cluster.nodes:
        with node.client() as redis:
            for key in redis.scan_iter("helios:*", count=1000):
                found[key] = node.port
    return found


async def test_every_bucket_has_its_own_keys_in_one_slot(
    redis_cluster: RedisClusterServers, gateway_factory: GatewayFactory
) -> None:
    helios = gateway_factory(POLICIES, redis_url=redis_cluster.url)
    seed = redis_cluster.nodes[0]
    assert len(set(BUCKETS)) == len(BUCKETS)
    await clear_of_window_end(seed, 3600, margin=15)
    costs = {bucket: 1 + index % 3 for index, bucket in enumerate(BUCKETS)}
    seen: dict[bytes, int] = all_keys(redis_cluster)

    async with client(helios) as http:
        for (tenant, resource), cost in costs.items():
            answer = await allow(http, tenant, resource, cost)
            assert (answer.status, answer.mode) == (200, "strong"), answer.body
            assert (answer.body["tenant"], answer.body["resource"]) == (tenant, resource)
            assert answer.remaining == 10 - cost, (tenant, resource)

            keys = all_keys(redis_cluster)
            new = {key: port for key, port in keys.items() if key not in seen}
            assert len(new) == 2, (tenant, resource, sorted(new))
            slots = {key_slot(seed, key) for key in new}
            assert len(slots) == 1, (tenant, resource, sorted(new))
            assert len(set(new.values())) == 1
            seen = keys

        # Nobody spent from anybody else's bucket.
        for (tenant, resource), cost in costs.items():
            figures = await quota(http, tenant, resource)
            assert figures.status == 200, figures.body
            assert figures.body["mode"] == "strong"
            assert [band["remaining"] for band in figures.body["bands"]] == [
                10 - cost,
                100 - cost,
            ], (tenant, resource)
