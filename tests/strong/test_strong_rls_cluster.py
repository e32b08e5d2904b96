"""Envoy's descriptors on a real three-master Redis Cluster: all or nothing across slots.

A request's descriptors name buckets in different hash slots, which no one
script may touch together; each slot is charged by a script of its own and a
refusal refunds the others. The tests pick buckets on different masters and
check, in Redis and through later answers, that no refused request leaves a
charge behind and that requests at once never admit more than a limit.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from redis_servers import RedisClusterServers
from strong_support import clear_of_window_end

from helios.backends.breaker import CircuitBreaker
from helios.backends.memory import BucketTable
from helios.backends.redis import key_slot, open_redis
from helios.backends.redis.strong import StrongBackend, hash_tag
from helios.core.policy import PolicySet, parse_policy
from helios.gateway.auth import KeyRing
from helios.gateway.service import Clock, Gateway
from helios.grpc.envoy import should_rate_limit_remote
from helios.grpc.generated.envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import (
    RateLimitDescriptor,
)
from helios.grpc.generated.envoy.service.ratelimit.v3.rls_pb2 import (
    RateLimitRequest,
    RateLimitResponse,
)

pytestmark = pytest.mark.slow

OK = RateLimitResponse.Code.OK
OVER = RateLimitResponse.Code.OVER_LIMIT

POLICIES = [
    {"resource": "remote_address=*", "algorithm": "fixed_window", "limit": 100},
    {"resource": "path=*", "algorithm": "fixed_window", "limit": 1},
    {"resource": "user=*", "algorithm": "token_bucket", "limit": 5},
    {"resource": "sliding=*", "algorithm": "sliding_window", "limit": 3},
]


@pytest.fixture
async def gateway(redis_cluster: RedisClusterServers) -> AsyncIterator[Gateway]:
    await clear_of_window_end(redis_cluster.nodes[0], 3600, margin=15)
    policies = PolicySet(
        parse_policy({"tenant": "acme", "window": "1h", **document}) for document in POLICIES
    )
    async with open_redis(redis_cluster.url, timeout_ms=2000) as redis:
        yield Gateway(
            policies,
            BucketTable(100),
            KeyRing([]),
            Clock(),
            mode="strong",
            remote=StrongBackend(redis),
            breaker=CircuitBreaker(),
        )


def master_of(cluster: RedisClusterServers, resource: str) -> int:
    return cluster.master_of_slot(key_slot("{" + hash_tag("acme", resource) + "}"))


def on_other_masters(cluster: RedisClusterServers, label: str, *keys: str) -> list[str]:
    """A value for each descriptor key, their buckets all on different masters.

    The values start with ``label``: the cluster's buckets outlive a test.
    """
    chosen: list[str] = []
    masters: set[int] = set()
    for key in keys:
        for number in itertools.count():
            value = f"{label}-{number}"
            master = master_of(cluster, f"{key}={value}")
            if master not in masters:
                chosen.append(value)
                masters.add(master)
                break
    return chosen


async def ask(gateway: Gateway, *entries: tuple[str, str, int]) -> Any:
    descriptors = []
    for key, value, hits in entries:
        descriptor = RateLimitDescriptor(entries=[RateLimitDescriptor.Entry(key=key, value=value)])
        descriptor.hits_addend.value = hits
        descriptors.append(descriptor)
    request = RateLimitRequest(domain="acme", descriptors=descriptors)
    return await should_rate_limit_remote(gateway, request, None)


def remaining(reply: Any) -> list[int]:
    return [status.limit_remaining for status in reply.statuses]


def fixed_window_count(cluster: RedisClusterServers, resource: str) -> int:
    """Units counted in a fixed window bucket, read from its master."""
    node = cluster.node(master_of(cluster, resource))
    with node.client() as redis:
        (key,) = redis.keys(f"helios:{{{hash_tag('acme', resource)}}}:*")
        return int(redis.hget(key, "c") or 0)


async def test_a_refused_request_leaves_no_charge_on_other_masters(
    redis_cluster: RedisClusterServers, gateway: Gateway
) -> None:
    keys = ("remote_address", "path", "user")
    address, path, user = on_other_masters(redis_cluster, "refused", *keys)
    sliding = "refused"
    first = await ask(gateway, ("remote_address", address, 1), ("path", path, 1))
    assert (first.overall_code, remaining(first)) == (OK, [99, 0])

    refused = await ask(gateway, ("remote_address", address, 1), ("path", path, 1))
    assert (refused.overall_code, remaining(refused)) == (OVER, [99, 0])
    assert [status.code for status in refused.statuses] == [OK, OVER]
    assert fixed_window_count(redis_cluster, f"remote_address={address}") == 1

    # A token bucket and a sliding window are refunded too.
    assert (await ask(gateway, ("user", user, 2), ("sliding", sliding, 2))).overall_code == OK
    again = await ask(gateway, ("user", user, 1), ("sliding", sliding, 1), ("path", path, 1))
    assert (again.overall_code, remaining(again)) == (OVER, [3, 1, 0])
    after = await ask(gateway, ("user", user, 3), ("sliding", sliding, 1))
    assert (after.overall_code, remaining(after)) == (OK, [0, 0])


async def test_requests_at_once_across_masters_admit_the_limit_and_charge_no_more(
    redis_cluster: RedisClusterServers, gateway: Gateway
) -> None:
    # Each request: an address (100 an hour, never the one to refuse) and a
    # path (1 an hour), then an address and a user (5 an hour), on other masters.
    address, path = on_other_masters(redis_cluster, "once-a", "remote_address", "path")
    other, user = on_other_masters(redis_cluster, "once-b", "remote_address", "user")
    replies: list[Any] = []

    async def one(entries: list[tuple[str, str, int]]) -> None:
        replies.append((entries[1][0], await ask(gateway, *entries)))

    async with trio.open_nursery() as nursery:
        for _ in range(30):
            nursery.start_soon(one, [("remote_address", address, 1), ("path", path, 1)])
            nursery.start_soon(one, [("remote_address", other, 1), ("user", user, 1)])

    admitted = {
        kind: sum(reply.overall_code == OK for k, reply in replies if k == kind)
        for kind in ("path", "user")
    }
    assert admitted == {"path": 1, "user": 5}
    assert fixed_window_count(redis_cluster, f"remote_address={address}") == 1
    assert fixed_window_count(redis_cluster, f"remote_address={other}") == 5
