"""STRONG mode through Sentinel: after a forced failover the gateway follows the new master."""

from __future__ import annotations

import time

import pytest
import trio
from redis_servers import RedisServer, SentinelServers, wait_until
from strong_support import Answer, GatewayFactory, allow, clear_of_window_end, client, wait_for

pytestmark = pytest.mark.slow

LIMIT = 100

POLICIES = f"""
[[policies]]
tenant = "sentinel"
resource = "*"
algorithm = "fixed_window"
limit = {LIMIT}
window = "1h"
"""

FAILOVER_TIMEOUT_SECONDS = 15.0
# Well under the ten seconds after which the sentinel demotes the old master
# (from then on it would answer READONLY): the gateway follows the announcement.
FOLLOW_TIMEOUT_SECONDS = 3.0


def helios_hashes(server: RedisServer) -> dict[bytes, dict[bytes, bytes]]:
    with server.client() as redis:
        return {key: redis.hgetall(key) for key in redis.scan_iter("helios:*")}


def role(server: RedisServer) -> str:
    reply = server.execute("ROLE")
    assert isinstance(reply, list)
    return reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])


def evalsha_calls(server: RedisServer) -> int:
    """Scripts run at this server's clients' request (replicated effects do not count)."""
    with server.client() as redis:
        stats = redis.info("commandstats")
    return sum(
        int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval")
    )


async def test_gateway_follows_the_new_master_after_failover(
    redis_sentinel: SentinelServers, gateway_factory: GatewayFactory
) -> None:
    old, new = redis_sentinel.master, redis_sentinel.replica
    helios = gateway_factory(POLICIES, redis_url=redis_sentinel.url)
    await clear_of_window_end(old, 3600, margin=30)

    async with client(helios) as http:
        before = [await allow(http, "sentinel", "bucket") for _ in range(10)]
        assert [(a.status, a.mode) for a in before] == [(200, "strong")] * 10
        assert [a.remaining for a in before] == list(range(LIMIT - 1, LIMIT - 11, -1))
        state = helios_hashes(old)
        assert len(state) == 1 and next(iter(state.values()))[b"c"] == b"10"
        # The replica has the bucket before the failover begins.
        wait_until("the replica has the bucket", lambda: helios_hashes(new) == state)

        redis_sentinel.sentinel.execute("SENTINEL", "FAILOVER", redis_sentinel.service_name)
        await trio.to_thread.run_sync(
            lambda: wait_until(
                "the sentinel names the new master",
                lambda: redis_sentinel.current_master_port() == new.port and role(new) == "master",
                FAILOVER_TIMEOUT_SECONDS,
            )
        )
        switched = time.monotonic()
        scripts_before = evalsha_calls(new)

        # The sentinel names the promoted replica a little before it announces
        # the switch (+switch-master), and the old master takes writes until
        # the sentinel turns it into a replica, up to ten seconds later: the
        # gateway must move on once the switch is announced, well before that.
        answers: list[Answer] = []

        async def on_new_master() -> bool:
            answer = await allow(http, "sentinel", "bucket")
            answers.append(answer)
            if answer.mode != "strong":
                return False
            (fields,) = helios_hashes(new).values()
            return int(fields[b"c"]) == LIMIT - answer.remaining

        await wait_for(
            "the gateway decides on the new master", on_new_master, seconds=FOLLOW_TIMEOUT_SECONDS
        )
        follow_seconds = time.monotonic() - switched
        followed = [answers[-1]] + [await allow(http, "sentinel", "bucket") for _ in range(5)]

    assert [(a.status, a.mode) for a in followed] == [(200, "strong")] * 6
    assert follow_seconds <= FOLLOW_TIMEOUT_SECONDS
    # Meanwhile decisions went to the old master or, during the switch, to memory.
    assert {a.mode for a in answers} <= {"strong", "local"}
    # The new master carries the bucket on from the old one: 10 spent before.
    assert followed[0].remaining == LIMIT - 11
    assert [a.remaining for a in followed] == list(range(LIMIT - 11, LIMIT - 17, -1))
    (fields,) = helios_hashes(new).values()
    assert int(fields[b"c"]) == LIMIT - followed[-1].remaining
    assert evalsha_calls(new) >= scripts_before + len(followed)
