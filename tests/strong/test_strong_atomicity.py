"""A request that one band denies charges no band: Redis is read back unchanged.

The policy has two bands, 3 per second and 5 per minute. One bucket is
denied by the per-second band (3 spent a moment ago), another by the
per-minute band (3 spent over a second ago: the second band has room for 3
again, the minute band only for 2). Before and after each denied request
every Helios key is read back with HGETALL and PTTL: the fields must be
identical and no expiry may have been pushed out.
"""

from __future__ import annotations

import time

import pytest
import trio
from redis_servers import RedisServer
from strong_support import (
    GatewayFactory,
    allow,
    clear_of_window_end,
    client,
    hash_state,
    keys_with_ttl,
    window_start,
)

pytestmark = pytest.mark.slow

ALGORITHMS = ["token_bucket", "fixed_window", "sliding_window"]

POLICIES = "".join(
    f"""
[[policies]]
tenant = "{algorithm}"
resource = "*"
algorithm = "{algorithm}"
bands = [{{ limit = 3, window = "1s" }}, {{ limit = 5, window = "1m" }}]
"""
    for algorithm in ALGORITHMS
)

# How long after spending 3 units the per-second band takes 3 again: a token
# bucket refills in 1 s; a fixed window starts afresh at the next second; a
# sliding window still weighs the previous second, so it needs two boundaries.
SECOND_BAND_BOUNDARIES = {"token_bucket": 0, "fixed_window": 1, "sliding_window": 2}


def snapshot(server: RedisServer) -> dict[str, tuple[dict[bytes, bytes], int]]:
    return {key: hash_state(server, key) for key in keys_with_ttl(server)}


def assert_unchanged(
    before: dict[str, tuple[dict[bytes, bytes], int]],
    after: dict[str, tuple[dict[bytes, bytes], int]],
    elapsed_ms: float,
) -> None:
    assert after.keys() == before.keys()
    for key, (fields, pttl) in before.items():
        fields_after, pttl_after = after[key]
        assert fields_after == fields, key
        # An untouched key's TTL only runs down; a write would have set it anew.
        assert 0 < pttl_after <= pttl, (key, pttl, pttl_after)
        assert pttl - pttl_after <= elapsed_ms + 5, (key, pttl, pttl_after)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_a_denied_request_changes_neither_band(
    algorithm: str, redis_server: RedisServer, gateway_factory: GatewayFactory
) -> None:
    helios = gateway_factory(POLICIES, redis_url=redis_server.url)
    # The minute band's window must not end during the test (fixed window).
    await clear_of_window_end(redis_server, 60, margin=6)
    # Start just after a second begins, so that "a moment ago" is the same second.
    await window_start(redis_server, 1)

    async with client(helios) as http:
        # The bucket the minute band will deny: spend 3 of its 5 now.
        first = await allow(http, algorithm, "minute-band", cost=3)
        spent_at = time.monotonic()
        assert (first.status, first.remaining, first.mode) == (200, 0, "strong")
        minute_keys = set(keys_with_ttl(redis_server))
        assert len(minute_keys) == 2, "one key per band"

        # Denied by the per-second band: 3 spent, a fourth unit asked for at once.
        spend = await allow(http, algorithm, "second-band", cost=3)
        assert (spend.status, spend.remaining) == (200, 0)
        second_keys = set(keys_with_ttl(redis_server)) - minute_keys
        assert len(second_keys) == 2, "one key per band"
        started = time.monotonic()
        before = snapshot(redis_server)
        denied = await allow(http, algorithm, "second-band", cost=1)
        after = snapshot(redis_server)
        assert denied.status == 429, denied.body
        assert (denied.body["limit"], denied.remaining, denied.mode) == (3, 0, "strong")
        assert_unchanged(before, after, (time.monotonic() - started) * 1000)

        # Denied by the per-minute band, once the per-second band has room again.
        boundaries = SECOND_BAND_BOUNDARIES[algorithm]
        if boundaries:
            for _ in range(boundaries):
                await window_start(redis_server, 1)
        else:
            await trio.sleep(max(0.0, spent_at + 1.05 - time.monotonic()))
        started = time.monotonic()
        before = snapshot(redis_server)
        denied = await allow(http, algorithm, "minute-band", cost=3)
        after = snapshot(redis_server)
        assert denied.status == 429, denied.body
        assert (denied.body["limit"], denied.remaining, denied.mode) == (5, 2, "strong")
        assert_unchanged(before, after, (time.monotonic() - started) * 1000)

        # The per-second band alone would have taken it: a cost of 2 fits both.
        allowed = await allow(http, algorithm, "minute-band", cost=2)
        assert (allowed.status, allowed.body["limit"], allowed.remaining) == (200, 5, 0)
