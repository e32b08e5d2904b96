"""Every Helios key carries a TTL, and once its state would be fresh again it is gone.

Short windows (300 ms and 1 s) keep this quick. While traffic runs, a checker
reads every key with its PTTL, atomically, about every 20 ms: no key may be
without an expiry (PTTL -1) and none may outlive the state it holds (a token
bucket is full again after its spent units refill, a fixed window ends, a
sliding window stops weighing on the next one after two windows). When the
traffic stops, the database empties within that bound.
"""

from __future__ import annotations

import time

import pytest
import trio
from redis_servers import RedisServer
from strong_support import GatewayFactory, allow, client, keys_with_ttl, wait_for

pytestmark = pytest.mark.slow

ALGORITHMS = {"token_bucket": "tb", "fixed_window": "fw", "sliding_window": "sw"}
BANDS = [(3, 300_000), (8, 1_000_000)]  # (limit, window in microseconds)

POLICIES = "".join(
    f"""
[[policies]]
tenant = "{algorithm}"
resource = "*"
algorithm = "{algorithm}"
bands = [{{ limit = 3, window = "300ms" }}, {{ limit = 8, window = "1s" }}]
"""
    for algorithm in ALGORITHMS
)

# Every key, whatever its name, is read; all must carry the configured prefix.
PREFIX = "expiry-test"
LOAD_SECONDS = 1.0
# The longest a key may live after the last write: two windows of the 1 s band
# (sliding window); the slack covers a loaded machine.
DRAIN_BOUND_SECONDS = 2.0
DRAIN_SLACK_SECONDS = 1.0


def lifetime_bound_ms(key: str) -> int:
    """The most a key of this band may have left to live, from its name.

    Keys are ``<prefix>:{<bucket>}:<tb|fw|sw>:<window in µs>``.
    """
    _, code, window_us = key.rsplit(":", 2)
    window_ms = int(window_us) // 1000
    return 2 * window_ms if code == "sw" else window_ms


def check_ttls(keys: dict[str, int]) -> None:
    for key, pttl in keys.items():
        assert key.startswith(PREFIX + ":{"), key
        assert pttl != -1, f"{key} has no expiry"
        # PTTL is rounded down: 0 means less than a millisecond left.
        assert 0 <= pttl <= lifetime_bound_ms(key), (key, pttl)


async def test_keys_always_expire_and_vanish_once_idle(
    redis_server: RedisServer, gateway_factory: GatewayFactory
) -> None:
    helios = gateway_factory(
        POLICIES, redis_url=redis_server.url, settings={"HELIOS_REDIS_KEY_PREFIX": PREFIX}
    )
    snapshots = 0
    seen: set[str] = set()

    async def checker() -> None:
        nonlocal snapshots
        while True:
            keys = await trio.to_thread.run_sync(keys_with_ttl, redis_server, "*")
            check_ttls(keys)
            seen.update(keys)
            snapshots += 1
            await trio.sleep(0.02)

    async with client(helios) as http:
        # One exact case first: a token bucket's key lives until its spent
        # units have refilled. 2 units of 3 per 300 ms: 200 ms; of 8 per 1 s: 250 ms.
        started = time.monotonic()
        first = await allow(http, "token_bucket", "exact", cost=2)
        keys = keys_with_ttl(redis_server, "*")
        elapsed_ms = (time.monotonic() - started) * 1000
        assert first.status == 200
        assert sorted(keys.values()) == [
            pytest.approx(200, abs=elapsed_ms + 2),
            pytest.approx(250, abs=elapsed_ms + 2),
        ]
        lifetimes = sorted(keys.values())
        assert lifetimes[0] <= 200 and lifetimes[1] <= 250, lifetimes

        async def traffic(algorithm: str, resource: str) -> None:
            deadline = time.monotonic() + LOAD_SECONDS
            index = 0
            while time.monotonic() < deadline:
                answer = await allow(http, algorithm, resource, cost=1 + index % 2)
                assert answer.status in (200, 429), answer.body
                assert answer.mode == "strong"
                index += 1
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(checker)
            async with trio.open_nursery() as load:
                for algorithm in ALGORITHMS:
                    for resource in ("a", "b"):
                        load.start_soon(traffic, algorithm, resource)
            stopped = time.monotonic()
            keys = keys_with_ttl(redis_server, "*")
            check_ttls(keys)
            # A sliding window's keys count for at least a window after the
            # last write: both bands of both buckets are still there.
            assert len([key for key in keys if ":sw:" in key]) == 2 * 2, keys

            async def empty() -> bool:
                return redis_server.execute("DBSIZE") == 0

            await wait_for(
                "every key has expired",
                empty,
                seconds=DRAIN_BOUND_SECONDS + DRAIN_SLACK_SECONDS,
                interval=0.02,
            )
            drained = time.monotonic() - stopped
            nursery.cancel_scope.cancel()

    assert snapshots >= 20, "the checker ran throughout"
    # It saw both bands of every bucket under load.
    assert len([key for key in seen if "exact" not in key]) == 2 * 2 * len(ALGORITHMS)
    assert drained <= DRAIN_BOUND_SECONDS + DRAIN_SLACK_SECONDS
    assert redis_server.execute("DBSIZE") == 0
