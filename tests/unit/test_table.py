"""The FAST bucket table: collision-free keys, a hard bound on buckets, sweeping."""

from __future__ import annotations

import pytest
import trio.testing
from hypothesis import assume, given
from hypothesis import strategies as st

from helios.backends.memory import BucketTable
from helios.core.names import bucket_key
from helios.core.policy import Policy, parse_policy
from helios.errors import CapacityExhausted

from .support import (
    EPOCH_NS,
    NS,
    PROPERTY,
    allow_target,
    make_gateway,
    make_server,
    open_connection,
)

# Names mixing the separators a naive key would use with spaces and non-ASCII letters.
NAMES = st.text(
    alphabet=st.sampled_from(
        [":", "/", "{", "}", " ", "ü", "日", "本", "a", "b", "c", "1", "*", "%"]
    )
    | st.characters(blacklist_categories=("Cs", "Cc")),
    min_size=1,
    max_size=8,
)
PAIRS = st.tuples(NAMES, NAMES)


def everyone(limit: int = 3, algorithm: str = "fixed_window") -> Policy:
    return parse_policy(
        {"tenant": "*", "resource": "*", "algorithm": algorithm, "limit": limit, "window": "1m"}
    )


def test_bucket_key_separates_tenant_and_resource() -> None:
    assert bucket_key("a:b", "c") != bucket_key("a", "b:c")
    assert bucket_key("ab", "c") != bucket_key("a", "bc")
    assert bucket_key("1:a", "b") != bucket_key("1", ":ab")


@PROPERTY
@given(PAIRS, PAIRS)
def test_bucket_keys_never_collide(first: tuple[str, str], second: tuple[str, str]) -> None:
    assume(first != second)
    assert bucket_key(*first) != bucket_key(*second)


@PROPERTY
@given(PAIRS)
def test_bucket_key_is_decodable(pair: tuple[str, str]) -> None:
    key = bucket_key(*pair).decode("utf-8", "surrogatepass")
    length, _, rest = key.partition(":")
    assert (rest[: int(length)], rest[int(length) :]) == pair


@PROPERTY
@given(PAIRS, PAIRS)
def test_spending_one_pair_never_changes_another(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    assume(first != second)
    table = BucketTable(10)
    policy = everyone(limit=3)
    assert table.decide(policy, *first, EPOCH_NS, 3).remaining == 0
    assert table.peek(policy, *second, EPOCH_NS)[0].remaining == 3
    assert table.decide(policy, *second, EPOCH_NS, 1).remaining == 2
    assert table.peek(policy, *first, EPOCH_NS)[0].remaining == 0
    assert len(table) == 2


@PROPERTY
@given(PAIRS, PAIRS)
def test_reset_of_one_tenant_keeps_every_other_tenant(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    assume(first[0] != second[0])
    table = BucketTable(10)
    policy = everyone(limit=3)
    table.decide(policy, *first, EPOCH_NS, 1)
    table.decide(policy, *second, EPOCH_NS, 1)
    assert table.reset(first[0]) == 1
    assert table.peek(policy, *first, EPOCH_NS)[0].remaining == 3
    assert table.peek(policy, *second, EPOCH_NS)[0].remaining == 2
    assert len(table) == 1


def full_sweep(table: BucketTable, now_ns: int) -> int:
    """Sweep until every shard has been visited at least once."""
    # Each call visits at least one shard, so this many calls make a full pass.
    return sum(table.sweep(now_ns, budget=1) for _ in range(table.statistics().shards))


def decide_or_refuse(table: BucketTable, policy: Policy, key: str, now_ns: int, cost: int) -> bool:
    """Decide one request; False when the table refused the new key."""
    try:
        table.decide(policy, "tenant", key, now_ns, cost)
    except CapacityExhausted:
        return False
    return True


@pytest.mark.parametrize(
    # The moment a drained key comes back (before it could take one unit), the
    # wait it is told, and when a drained bucket holds nothing any more.
    ("algorithm", "comeback_s", "retry_after_ms", "idle_s"),
    [
        ("token_bucket", 11, 1_000, 60),
        ("fixed_window", 59, 1_000, 60),
        ("sliding_window", 59, 13_000, 120),
    ],
)
def test_many_keys_never_exceed_max_buckets_and_throttled_keys_stay_throttled(
    algorithm: str, comeback_s: int, retry_after_ms: int, idle_s: int
) -> None:
    policy = everyone(limit=5, algorithm=algorithm)
    table = BucketTable(1_000)

    # 10,000 keys at t = 0, each spending its whole limit: the first 1,000 get
    # a bucket, the rest are refused.
    admitted = []
    for index in range(10_000):
        if decide_or_refuse(table, policy, f"user:{index}", EPOCH_NS, 5):
            admitted.append(index)
        assert len(table) <= 1_000
    assert admitted == list(range(1_000))
    assert table.statistics().refusals == 9_000

    # Before any drained bucket could take a unit, sweeps drop nothing and
    # every drained key is still denied: none was handed a fresh bucket.
    comeback = EPOCH_NS + comeback_s * NS
    assert full_sweep(table, EPOCH_NS) == 0
    assert full_sweep(table, comeback) == 0
    for index in admitted:
        decision = table.decide(policy, "tenant", f"user:{index}", comeback, 1)
        assert (decision.allowed, decision.retry_after_ms) == (False, retry_after_ms)
    assert not decide_or_refuse(table, policy, "user:10000", comeback, 1)
    assert len(table) == 1_000
    assert table.statistics().refusals == 9_001

    # Once the drained buckets hold nothing, a sweep frees them and new keys
    # are admitted again, up to the bound.
    later = EPOCH_NS + idle_s * NS
    assert full_sweep(table, later - 1) == 0
    assert full_sweep(table, later) == 1_000
    assert len(table) == 0
    admitted = []
    for index in range(10_000, 20_000):
        if decide_or_refuse(table, policy, f"user:{index}", later, 5):
            admitted.append(index)
        assert len(table) <= 1_000
    assert admitted == list(range(10_000, 11_000))

    statistics = table.statistics()
    assert (statistics.buckets, statistics.max_buckets) == (1_000, 1_000)
    assert statistics.refusals == 9_001 + 9_000
    assert statistics.evictions == 1_000


def test_a_full_table_still_decides_for_keys_it_holds() -> None:
    table = BucketTable(2)
    policy = everyone(limit=3)
    table.decide(policy, "t", "a", EPOCH_NS, 1)
    table.decide(policy, "t", "b", EPOCH_NS, 1)
    assert table.decide(policy, "t", "a", EPOCH_NS, 1).remaining == 1
    with pytest.raises(CapacityExhausted):
        table.decide(policy, "t", "c", EPOCH_NS, 1)
    # Peeking at an unknown key reports a fresh bucket and stores nothing.
    assert table.peek(policy, "t", "c", EPOCH_NS)[0].remaining == 3
    assert len(table) == 2
    assert table.statistics().refusals == 1


def test_sweep_keeps_buckets_that_still_hold_counts() -> None:
    table = BucketTable(100)
    policy = everyone(limit=2, algorithm="token_bucket")
    table.decide(policy, "t", "half", EPOCH_NS, 1)
    table.decide(policy, "t", "full", EPOCH_NS, 2)
    # One unit refills in 30 s: "half" is full again at 30 s, "full" at 60 s.
    assert full_sweep(table, EPOCH_NS + 30 * NS - 1) == 0
    assert full_sweep(table, EPOCH_NS + 30 * NS) == 1
    assert table.peek(policy, "t", "full", EPOCH_NS + 30 * NS)[0].remaining == 1
    assert full_sweep(table, EPOCH_NS + 60 * NS) == 1
    assert len(table) == 0


async def test_a_full_table_answers_503_with_retry_after(
    mock_clock: trio.testing.MockClock,
) -> None:
    gateway = make_gateway(
        {"tenant": "*", "resource": "*", "limit": 3, "window": "1m"}, max_buckets=1
    )
    server = make_server(gateway)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        assert (await conn.get(allow_target(tenant="acme", resource="a"))).status == 200
        response = await conn.get(allow_target(tenant="acme", resource="b"))
        assert response.status == 503
        assert response.headers["retry-after"] == "1"
        assert "full" in response.json["error"]
        assert (await conn.get(allow_target(tenant="acme", resource="a"))).json["remaining"] == 1
        nursery.cancel_scope.cancel()
    assert gateway.table.statistics().refusals == 1
