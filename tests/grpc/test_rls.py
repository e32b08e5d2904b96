"""Envoy's rate limit service, served in-process over gRPC, in FAST and in STRONG mode.

Each scenario runs against a FAST gateway (memory) and a STRONG gateway (a
real redis-server), with the same expected answers; a parity test sends one
random sequence of requests to both at once and compares every answer. The
STRONG gateway's failures (Redis stalled with SIGSTOP) answer UNAVAILABLE.

Windows are an hour long, so the few milliseconds a test takes cannot move
a figure; a test that starts within a few seconds of the end of an hour waits
for the next one (see ``clear_of_the_hour``).
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import purerpc
import pytest
import trio
from grpc_e2e_support import RedisServer, redis_server, stalled
from hypothesis import given
from hypothesis import strategies as st
from purerpc.grpclib.exceptions import RpcFailedError
from purerpc.grpclib.status import StatusCode

from helios.backends.breaker import CircuitBreaker
from helios.backends.memory import BucketTable
from helios.backends.redis import open_redis
from helios.backends.redis.client import RedisLike
from helios.backends.redis.strong import StrongBackend
from helios.gateway.auth import KeyRing
from helios.gateway.service import Check, Clock, Gateway
from helios.grpc import serve_grpc
from helios.grpc.envoy import descriptor_resource
from helios.grpc.generated.envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import (
    RateLimitDescriptor,
)
from helios.grpc.generated.envoy.service.ratelimit.v3 import rls_grpc
from helios.grpc.generated.envoy.service.ratelimit.v3.rls_pb2 import (
    RateLimitRequest,
    RateLimitResponse,
)
from tests.unit.support import API_KEY, PROPERTY, policy_set

KEY = (("x-api-key", API_KEY),)
OK = RateLimitResponse.Code.OK
OVER = RateLimitResponse.Code.OVER_LIMIT

HOUR = 3600


def policy(resource: str, algorithm: str, limit: int, **more: Any) -> dict[str, Any]:
    return {
        "tenant": "acme",
        "resource": resource,
        "algorithm": algorithm,
        "limit": limit,
        "window": "1h",
        **more,
    }


POLICIES = (
    policy("remote_address=*", "fixed_window", 10),
    policy("path=*", "fixed_window", 1),
    # Paths under /api/: "/" is percent-encoded in a descriptor's resource.
    policy("path=%2Fapi%2F*", "fixed_window", 2),
    policy("user=*", "token_bucket", 5),
    policy("sliding=*", "sliding_window", 3),
    policy("shadow=*", "fixed_window", 1, shadow=True),
)

# A decision waits for Redis this long before it fails (generous: a loaded
# machine must not turn these tests into timeout tests, but those about failure).
TIMEOUT_MS = 2000.0
FAILING_TIMEOUT_MS = 250.0


def descriptor(*entries: tuple[str, str], hits: int | None = None) -> RateLimitDescriptor:
    d = RateLimitDescriptor(entries=[RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries])
    if hits is not None:
        d.hits_addend.value = hits
    return d


def request(*descriptors: RateLimitDescriptor, hits: int = 0, domain: str = "acme") -> Any:
    return RateLimitRequest(domain=domain, descriptors=descriptors, hits_addend=hits)


def headers(reply: Any) -> dict[str, str]:
    return {header.key: header.value for header in reply.response_headers_to_add}


def remaining(reply: Any) -> list[int]:
    return [status.limit_remaining for status in reply.statuses]


def codes(reply: Any) -> list[int]:
    return [status.code for status in reply.statuses]


async def clear_of_the_hour(margin: float = 20.0) -> None:
    """Wait, if need be, until the current hour has ``margin`` s left (Redis runs here too)."""
    left = HOUR - time.time() % HOUR
    if left < margin:
        await trio.sleep(left + 0.1)


@dataclass
class Rls:
    """A gateway served over gRPC, and a client of its rate limit service."""

    gateway: Gateway
    stub: Any
    server: RedisServer | None = None

    async def __call__(self, message: Any) -> Any:
        return await self.stub.ShouldRateLimit(message, metadata=KEY)

    async def code(self, message: Any, metadata: Any = KEY) -> StatusCode:
        with pytest.raises(RpcFailedError) as info:
            await self.stub.ShouldRateLimit(message, metadata=metadata)
        return info.value.status.status_code


def fast_gateway(policies: Sequence[Mapping[str, Any]] = POLICIES) -> Gateway:
    return Gateway(policy_set(*policies), BucketTable(1000), KeyRing([API_KEY]), Clock())


def strong_gateway(
    redis: RedisLike, policies: Sequence[Mapping[str, Any]] = POLICIES, **breaker: Any
) -> Gateway:
    return Gateway(
        policy_set(*policies),
        BucketTable(1000),
        KeyRing([API_KEY]),
        Clock(),
        mode="strong",
        remote=StrongBackend(redis),
        breaker=CircuitBreaker(**breaker),
    )


@asynccontextmanager
async def serve(
    nursery: trio.Nursery, gateway: Gateway, server: RedisServer | None = None
) -> AsyncIterator[Rls]:
    address = await nursery.start(serve_grpc, gateway, "127.0.0.1", 0)
    async with purerpc.insecure_channel(*address) as channel:
        yield Rls(gateway, rls_grpc.RateLimitServiceStub(channel), server)


@asynccontextmanager
async def with_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server


@pytest.fixture(params=["fast", "strong"])
async def rls(
    request: pytest.FixtureRequest, nursery: trio.Nursery, tmp_path: Path
) -> AsyncIterator[Rls]:
    """The rate limit service of a FAST gateway, then of a STRONG one."""
    await clear_of_the_hour()
    if request.param == "fast":
        async with serve(nursery, fast_gateway()) as served:
            yield served
        return
    async with (
        with_redis(tmp_path) as server,
        open_redis(server.url, timeout_ms=TIMEOUT_MS) as redis,
        serve(nursery, strong_gateway(redis), server) as served,
    ):
        yield served


async def test_one_descriptor_over_refuses_the_request_and_charges_no_other(rls: Rls) -> None:
    both = request(descriptor(("remote_address", "10.0.0.1")), descriptor(("path", "/a")))
    first = await rls(both)
    assert first.overall_code == OK
    assert codes(first) == [OK, OK]
    assert remaining(first) == [9, 0]

    second = await rls(both)
    assert second.overall_code == OVER
    assert codes(second) == [OK, OVER]
    # Nothing was charged: the address reports its bucket as it is.
    assert remaining(second) == [9, 0]
    address, path = second.statuses
    assert address.current_limit.requests_per_unit == 10
    assert address.current_limit.unit == RateLimitResponse.RateLimit.Unit.HOUR
    assert address.current_limit.name == "acme/remote_address=* 10/1h"
    assert 0 < path.duration_until_reset.seconds <= HOUR

    # The headers are those of the descriptor over its limit, as HTTP writes them.
    sent = headers(second)
    retry_after = int(sent["retry-after"])
    assert 1 <= retry_after <= HOUR
    assert sent["x-ratelimit-limit"] == "1"
    assert sent["x-ratelimit-remaining"] == "0"
    assert int(sent["x-ratelimit-reset"]) >= time.time()
    assert sent["ratelimit-policy"] == '"acme/path=*";q=1;w=3600'
    assert sent["ratelimit"] == f'"acme/path=*";r=0;t={retry_after}'

    alone = await rls(request(descriptor(("remote_address", "10.0.0.1"))))
    assert (alone.overall_code, remaining(alone)) == (OK, [8])
    # Counted: two allowed, then one denied (the address was neither), then one allowed.
    assert (rls.gateway.allowed, rls.gateway.denied) == (3, 1)


async def test_an_allowed_request_sends_the_headers_of_its_tightest_descriptor(rls: Rls) -> None:
    reply = await rls(
        request(descriptor(("remote_address", "10.0.0.3")), descriptor(("user", "carol"), hits=4))
    )
    assert (reply.overall_code, remaining(reply)) == (OK, [9, 1])
    sent = headers(reply)
    assert "retry-after" not in sent
    assert sent["x-ratelimit-remaining"] == "1"
    assert sent["ratelimit-policy"] == '"acme/user=*";q=5;w=3600'
    # A token bucket of 5 an hour is full again 4 × 720 s after 4 units.
    assert sent["ratelimit"] == '"acme/user=*";r=1;t=2880'


async def test_of_several_descriptors_over_the_headers_name_the_longest_wait(rls: Rls) -> None:
    both = request(descriptor(("path", "/w")), descriptor(("user", "frank"), hits=5))
    assert (await rls(both)).overall_code == OK
    over = await rls(both)
    assert (over.overall_code, codes(over)) == (OVER, [OVER, OVER])
    # The path's window ends within the hour; five units of 5 an hour take an hour.
    sent = headers(over)
    assert sent["ratelimit-policy"] == '"acme/user=*";q=5;w=3600'
    assert sent["retry-after"] == "3600"


async def test_hits_addend_zero_counts_one_and_five_counts_five(rls: Rls) -> None:
    address = descriptor(("remote_address", "10.0.0.2"))
    zero = await rls(request(address, hits=0))
    assert (zero.overall_code, remaining(zero)) == (OK, [9])
    five = await rls(request(address, hits=5))
    assert (five.overall_code, remaining(five)) == (OK, [4])
    # A descriptor's own hits_addend wins over the request's.
    own = await rls(request(descriptor(("remote_address", "10.0.0.2"), hits=5), hits=1))
    assert (own.overall_code, remaining(own)) == (OVER, [4])
    rest = await rls(request(address, hits=4))
    assert (rest.overall_code, remaining(rest)) == (OK, [0])


async def test_a_domain_or_descriptor_without_policy_answers_ok(rls: Rls) -> None:
    nobody = await rls(request(descriptor(("a", "b")), domain="nobody"))
    assert nobody.overall_code == OK
    assert codes(nobody) == [OK]
    assert not nobody.statuses[0].HasField("current_limit")
    assert not nobody.response_headers_to_add

    mixed = await rls(request(descriptor(("unknown", "x")), descriptor(("path", "/m"))))
    assert (mixed.overall_code, codes(mixed)) == (OK, [OK, OK])
    assert not mixed.statuses[0].HasField("current_limit")
    assert mixed.statuses[1].limit_remaining == 0


async def test_a_shadow_policy_reports_ok_but_counts(rls: Rls) -> None:
    shadow = request(descriptor(("shadow", "x")))
    replies = [await rls(shadow) for _ in range(3)]
    assert [reply.overall_code for reply in replies] == [OK, OK, OK]
    assert [codes(reply) for reply in replies] == [[OK]] * 3
    assert [remaining(reply) for reply in replies] == [[0]] * 3
    assert (rls.gateway.allowed, rls.gateway.shadow_denied) == (1, 2)
    # A shadow descriptor that would deny adds no retry-after.
    assert "retry-after" not in headers(replies[2])

    # It never stops the others, and the others do stop it from being charged.
    mixed = request(descriptor(("shadow", "y")), descriptor(("path", "/s")))
    assert codes(await rls(mixed)) == [OK, OK]
    refused = await rls(mixed)
    assert (refused.overall_code, codes(refused)) == (OVER, [OK, OVER])
    # shadow=y was charged by the first request: it would deny, and is counted so.
    assert (rls.gateway.allowed, rls.gateway.denied, rls.gateway.shadow_denied) == (3, 1, 3)


async def test_descriptors_that_share_a_bucket_ask_for_their_sum(rls: Rls) -> None:
    bob = descriptor(("user", "bob"))
    bob_two = descriptor(("user", "bob"), hits=2)
    two = await rls(request(bob_two, bob_two))
    assert (two.overall_code, remaining(two)) == (OK, [3, 1])

    # One unit left, two asked: the second is over, with nothing left for it.
    over = await rls(request(bob, bob))
    assert (over.overall_code, codes(over), remaining(over)) == (OVER, [OK, OVER], [1, 0])
    sent = headers(over)
    assert sent["x-ratelimit-remaining"] == "0"
    assert sent["ratelimit"].startswith('"acme/user=*";r=0;t=')
    # Four units spent of 5 an hour: two fit once one unit has flowed back (720 s).
    assert 719 <= int(sent["retry-after"]) <= 720
    last = await rls(request(bob))
    assert (last.overall_code, remaining(last)) == (OK, [0])

    # More than the bucket can ever hold: over, not an error, and nothing charged.
    never = await rls(
        request(descriptor(("user", "ann"), hits=3), descriptor(("user", "ann"), hits=3))
    )
    assert (never.overall_code, codes(never), remaining(never)) == (OVER, [OK, OVER], [5, 2])
    assert int(headers(never)["retry-after"]) >= 1
    full = await rls(request(descriptor(("user", "ann"), hits=5)))
    assert (full.overall_code, remaining(full)) == (OK, [0])

    slide = descriptor(("sliding", "s"))
    assert (await rls(request(slide, slide, slide, slide))).overall_code == OVER
    three = await rls(request(slide, slide, slide))
    assert (three.overall_code, remaining(three)) == (OK, [2, 1, 0])


async def test_descriptors_that_join_to_the_same_text_have_their_own_buckets(rls: Rls) -> None:
    # Both would be "path=/z/user=bob" if entries were joined as they are.
    two_entries = request(descriptor(("path", "/z"), ("user", "bob")))
    one_entry = request(descriptor(("path", "/z/user=bob")))
    assert (await rls(two_entries)).overall_code == OK
    assert (await rls(one_entry)).overall_code == OK
    assert (await rls(two_entries)).overall_code == OVER
    assert (await rls(one_entry)).overall_code == OVER

    api = await rls(request(descriptor(("path", "/api/v1/users"))))
    assert api.statuses[0].current_limit.name == "acme/path=%2Fapi%2F* 2/1h"
    assert remaining(api) == [1]


async def test_requests_at_once_charge_every_descriptor_or_none(rls: Rls) -> None:
    # 40 requests at once, each for an address (10 an hour) and a user (5 an
    # hour): exactly 5 are allowed, and the address is charged for those only.
    both = request(descriptor(("remote_address", "10.7.7.7")), descriptor(("user", "race")))
    replies: list[Any] = []

    async def ask() -> None:
        replies.append(await rls(both))

    async with trio.open_nursery() as nursery:
        for _ in range(40):
            nursery.start_soon(ask)
    assert sum(reply.overall_code == OK for reply in replies) == 5
    after = await rls(request(descriptor(("remote_address", "10.7.7.7"))))
    assert remaining(after) == [4]


async def test_bad_requests_are_errors(rls: Rls) -> None:
    good = request(descriptor(("path", "/x")))
    assert await rls.code(good, metadata=()) == StatusCode.UNAUTHENTICATED
    assert await rls.code(request()) == StatusCode.INVALID_ARGUMENT
    assert await rls.code(request(descriptor(("path", "/x")), domain="")) == (
        StatusCode.INVALID_ARGUMENT
    )
    assert await rls.code(request(RateLimitDescriptor())) == StatusCode.INVALID_ARGUMENT
    assert await rls.code(request(descriptor(("path", "/x"), hits=10**10))) == (
        StatusCode.INVALID_ARGUMENT
    )
    assert await rls.code(request(descriptor(("path", "x" * 300)))) == (StatusCode.INVALID_ARGUMENT)
    # Nothing was charged.
    assert (await rls(good)).overall_code == OK


# STRONG mode: Redis failing.

FAILURE_MODES = ("local", "open", "closed")
FAILURE_POLICIES = tuple(
    policy(f"{mode}=*", "token_bucket", 100, failure_mode=mode) for mode in FAILURE_MODES
)


async def test_redis_failing_answers_unavailable_within_one_timeout(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    all_modes = request(
        descriptor(("local", "a")),
        descriptor(("open", "b")),
        descriptor(("closed", "c")),
        descriptor(("nothing", "d")),
    )
    async with (
        with_redis(tmp_path) as server,
        open_redis(server.url, timeout_ms=FAILING_TIMEOUT_MS) as redis,
    ):
        gateway = strong_gateway(redis, FAILURE_POLICIES, failure_threshold=3)
        async with serve(nursery, gateway, server) as rls:
            assert (await rls(all_modes)).overall_code == OK
            with stalled(server):
                # Whatever each policy's failure mode: Envoy's own applies.
                started = time.perf_counter()
                assert await rls.code(all_modes) == StatusCode.UNAVAILABLE
                waited = time.perf_counter() - started
                for _ in range(2):
                    assert await rls.code(request(descriptor(("local", "a")))) == (
                        StatusCode.UNAVAILABLE
                    )
                # Three failures opened the circuit: no more waiting.
                started = time.perf_counter()
                assert await rls.code(all_modes) == StatusCode.UNAVAILABLE
                open_waited = time.perf_counter() - started
                # A domain without policies needs no Redis.
                nobody = await rls(request(descriptor(("a", "b")), domain="nobody"))
                assert nobody.overall_code == OK
    # One wait for the timeout, however many descriptors (with room for a busy machine).
    assert FAILING_TIMEOUT_MS / 1000 <= waited < 2 * FAILING_TIMEOUT_MS / 1000, waited
    assert open_waited < FAILING_TIMEOUT_MS / 1000, open_waited
    assert gateway.backend_errors == {"RedisTimeout": 3}


# FAST and STRONG answer alike.

POOL = [
    ("remote_address", "10.1.1.1"),
    ("remote_address", "10.1.1.2"),
    ("path", "/p"),
    ("path", "/api/q"),
    ("user", "dan"),
    ("user", "eve"),
    ("sliding", "w"),
    ("shadow", "z"),
]


def comparable(reply: Any) -> tuple[Any, ...]:
    """A reply's figures, with those that depend on the instant (±1 s) set apart."""
    statuses = [
        (
            status.code,
            status.limit_remaining,
            status.current_limit.name,
            status.current_limit.requests_per_unit,
            status.current_limit.unit,
        )
        for status in reply.statuses
    ]
    sent = headers(reply)
    timed = {}
    for name in ("x-ratelimit-reset", "retry-after"):
        if name in sent:
            timed[name] = int(sent.pop(name))
    if "ratelimit" in sent:
        head, _, t = sent.pop("ratelimit").rpartition(";t=")
        sent["ratelimit"] = head
        timed["t"] = int(t)
    resets = [status.duration_until_reset.seconds for status in reply.statuses]
    return (reply.overall_code, statuses, sent), (timed, resets)


async def test_fast_and_strong_answer_alike(nursery: trio.Nursery, tmp_path: Path) -> None:
    await clear_of_the_hour(margin=60)
    chooser = random.Random(20270115)
    sequence = []
    for _ in range(80):
        entries = chooser.sample(POOL, chooser.randint(1, 3))
        if chooser.random() < 0.3:
            entries.append(entries[0])  # a bucket asked twice
        sequence.append(
            request(
                *(descriptor(entry, hits=chooser.randint(0, 3)) for entry in entries),
                hits=chooser.randint(0, 2),
            )
        )

    async with (
        with_redis(tmp_path) as server,
        open_redis(server.url, timeout_ms=TIMEOUT_MS) as redis,
        serve(nursery, fast_gateway()) as fast,
        serve(nursery, strong_gateway(redis), server) as strong,
    ):
        pairs = [(await fast(message), await strong(message)) for message in sequence]

    overall = {fast_reply.overall_code for fast_reply, _ in pairs}
    assert overall == {OK, OVER}, "both answers occur, so both paths are compared"
    for index, (fast_reply, strong_reply) in enumerate(pairs):
        (fast_figures, (fast_timed, fast_resets)) = comparable(fast_reply)
        (strong_figures, (strong_timed, strong_resets)) = comparable(strong_reply)
        assert strong_figures == fast_figures, (index, sequence[index])
        assert fast_timed.keys() == strong_timed.keys(), index
        for name, value in fast_timed.items():
            assert abs(strong_timed[name] - value) <= 1, (index, name)
        for fast_reset, strong_reset in zip(fast_resets, strong_resets, strict=True):
            assert abs(fast_reset - strong_reset) <= 1, index
    counts = ("allowed", "denied", "shadow_denied")
    assert [getattr(strong.gateway, name) for name in counts] == [
        getattr(fast.gateway, name) for name in counts
    ]


# The resource of a descriptor.


def _entries_of(resource: str) -> list[tuple[str, str]]:
    """The inverse of descriptor_resource: entries split at "/", each at its first "="."""
    entries = []
    for entry in resource.split("/"):
        key, equals, value = entry.partition("=")
        assert equals
        entries.append((unquote(key), unquote(value)))
    return entries


@PROPERTY
@given(st.lists(st.tuples(st.text(), st.text()), min_size=1, max_size=4))
def test_a_descriptor_resource_names_its_entries_unambiguously(
    entries: list[tuple[str, str]],
) -> None:
    resource = descriptor_resource(entries)
    assert _entries_of(resource) == entries
    assert not any(ord(c) < 0x20 or c == "\x7f" for c in resource)
    assert "*" not in resource


def test_descriptor_resources_keep_plain_entries_as_they_are() -> None:
    assert descriptor_resource([("remote_address", "10.0.0.1")]) == "remote_address=10.0.0.1"
    assert descriptor_resource([("a", "b=c"), ("d", "e")]) == "a=b=c/d=e"
    assert descriptor_resource([("a=b", "c")]) == "a%3Db=c"
    assert descriptor_resource([("path", "/z"), ("user", "bob")]) == "path=%2Fz/user=bob"
    assert descriptor_resource([("path", "/z/user=bob")]) == "path=%2Fz%2Fuser=bob"
    assert descriptor_resource([("q", "50%*")]) == "q=50%25%2A"


# All or nothing, as a property of the in-memory decision.


class _Frozen(Clock):
    def now_ns(self) -> int:
        return 1_800_000_000 * 1_000_000_000


PROPERTY_POLICIES = (
    {"tenant": "t", "resource": "fw*", "algorithm": "fixed_window", "limit": 4, "window": "1h"},
    {"tenant": "t", "resource": "tb*", "algorithm": "token_bucket", "limit": 5, "window": "1h"},
    {"tenant": "t", "resource": "sw*", "algorithm": "sliding_window", "limit": 3, "window": "1h"},
    {
        "tenant": "t",
        "resource": "sh*",
        "algorithm": "fixed_window",
        "limit": 2,
        "window": "1h",
        "shadow": True,
    },
)
RESOURCES = ["fw1", "fw2", "tb1", "sw1", "sh1", "none"]


@PROPERTY
@given(
    st.lists(
        st.lists(st.tuples(st.sampled_from(RESOURCES), st.integers(1, 4)), min_size=1, max_size=4),
        min_size=1,
        max_size=12,
    )
)
def test_descriptors_are_charged_all_together_or_not_at_all(
    requests: list[list[tuple[str, int]]],
) -> None:
    gateway = Gateway(policy_set(*PROPERTY_POLICIES), BucketTable(100), KeyRing([]), _Frozen())
    now = gateway.clock.now_ns()

    def left(resource: str) -> list[int]:
        policy = gateway.policies.resolve("t", resource)
        assert policy is not None
        return [band.remaining for band in gateway.table.peek(policy, "t", resource, now)[1]]

    for checks in requests:
        # Per bucket: what its checks ask of it, one after the other.
        asked: dict[str, list[int]] = {}
        for resource, cost in checks:
            if resource != "none":
                units = asked.setdefault(resource, [])
                units.append((units[-1] if units else 0) + cost)
        before = {resource: left(resource) for resource in asked}
        decisions = gateway.decide_all([Check("t", r, cost) for r, cost in checks], None)

        assert [d is None for d in decisions] == [r == "none" for r, _ in checks]
        # Each bucket can take the units of the checks that fit, which come first.
        taken = {
            r: max([u for u in units if all(u <= band for band in before[r])], default=0)
            for r, units in asked.items()
        }
        refused = any(taken[r] < units[-1] for r, units in asked.items() if not r.startswith("sh"))
        assert any(d is not None and not d.allowed for d in decisions) == refused
        for resource in asked:
            charged = 0 if refused else taken[resource]
            assert left(resource) == [band - charged for band in before[resource]], resource
