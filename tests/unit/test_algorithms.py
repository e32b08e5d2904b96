"""The decision core: each algorithm, several bands, calendar windows, policy changes.

Plain synchronous tests on :func:`helios.core.decision.decide` and the bucket
table, with time as integer nanoseconds since the Unix epoch.
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import permutations
from typing import Any

import pytest

from helios.backends.memory import BucketTable
from helios.core.decision import BucketState, Decision, decide, inspect
from helios.core.policy import Policy, parse_policy

from .support import EPOCH_NS, NS

MS = 1_000_000


def policy(algorithm: str, **fields: Any) -> Policy:
    return parse_policy({"tenant": "acme", "resource": "demo", "algorithm": algorithm, **fields})


def utc_ns(*parts: int) -> int:
    return int(datetime(*parts, tzinfo=UTC).timestamp()) * NS  # type: ignore[misc]


class Bucket:
    """One bucket's state, threaded through successive decisions."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.state: BucketState | None = None

    def __call__(self, now_ns: int, cost: int = 1) -> Decision:
        decision, self.state = decide(self.policy, self.state, now_ns, cost)
        return decision

    def remaining_per_band(self, now_ns: int) -> list[int]:
        return [quota.remaining for quota in inspect(self.policy, self.state, now_ns)]


# Token bucket.


def test_token_bucket_starts_full_and_refills_continuously() -> None:
    bucket = Bucket(policy("token_bucket", limit=5, window="1m", burst=5))
    assert [bucket(EPOCH_NS).remaining for _ in range(5)] == [4, 3, 2, 1, 0]

    denied = bucket(EPOCH_NS)
    assert (denied.allowed, denied.remaining, denied.retry_after_ms) == (False, 0, 12_000)
    assert (denied.retry_after_seconds, denied.reset_seconds) == (12, 60)

    almost = bucket(EPOCH_NS + 11_990 * MS)
    assert (almost.allowed, almost.retry_after_ms, almost.retry_after_seconds) == (False, 10, 1)
    assert almost.reset_seconds == 49  # 48.01 s until full, rounded up

    refilled = bucket(EPOCH_NS + 12 * NS)
    assert (refilled.allowed, refilled.remaining, refilled.retry_after_ms) == (True, 0, 0)
    assert refilled.retry_after_seconds == 0


def test_token_bucket_burst_above_limit() -> None:
    bucket = Bucket(policy("token_bucket", limit=1, window="1s", burst=3))
    assert bucket(EPOCH_NS, 3).remaining == 0
    assert bucket(EPOCH_NS + 999 * MS).retry_after_ms == 1
    assert bucket(EPOCH_NS + 2 * NS).remaining == 1
    # Never more than the burst, however long the bucket waits.
    assert bucket.remaining_per_band(EPOCH_NS + 3600 * NS) == [3]


# Fixed window.


def test_fixed_window_resets_at_the_epoch_aligned_boundary() -> None:
    bucket = Bucket(policy("fixed_window", limit=5, window="1m"))
    for index, remaining in enumerate((4, 3, 2, 1, 0)):
        assert bucket(EPOCH_NS + index * 100 * MS).remaining == remaining
    denied = bucket(EPOCH_NS + 500 * MS)
    assert (denied.allowed, denied.retry_after_ms, denied.retry_after_seconds) == (
        False,
        59_500,
        60,
    )
    assert denied.reset_time == EPOCH_NS // NS + 60
    last_moment = bucket(EPOCH_NS + 60 * NS - 1)
    assert (last_moment.allowed, last_moment.retry_after_ms) == (False, 1)
    assert bucket(EPOCH_NS + 60 * NS).remaining == 4


# Sliding window.


def test_sliding_window_weighs_the_previous_window() -> None:
    bucket = Bucket(policy("sliding_window", limit=10, window="10s"))
    assert [bucket(EPOCH_NS).remaining for _ in range(10)] == list(range(9, -1, -1))

    denied = bucket(EPOCH_NS)
    assert (denied.allowed, denied.remaining, denied.retry_after_ms) == (False, 0, 11_000)
    assert (denied.retry_after_seconds, denied.reset_seconds) == (11, 10)

    # At t = 10 the estimate is still 10 × (1 − 0/10) + 0 = 10; at t = 11 it is 9.
    at_ten = bucket(EPOCH_NS + 10 * NS)
    assert (at_ten.allowed, at_ten.retry_after_ms) == (False, 1_000)

    # At t = 15: 10 × (1 − 5/10) + 0 = 5 spent; this request leaves 4.
    at_fifteen = bucket(EPOCH_NS + 15 * NS)
    assert (at_fifteen.allowed, at_fifteen.remaining, at_fifteen.reset_seconds) == (True, 4, 5)
    assert bucket(EPOCH_NS + 15 * NS).remaining == 3
    # Two windows later nothing is remembered.
    assert bucket.remaining_per_band(EPOCH_NS + 30 * NS) == [10]


def test_sliding_window_wait_for_a_large_cost_spans_into_the_next_window() -> None:
    bucket = Bucket(policy("sliding_window", limit=10, window="10s"))
    assert bucket(EPOCH_NS + 2 * NS, 4).remaining == 6
    # 4 now + 8 > 10: in the next window the estimate is 4 × (1 − e/10) ≤ 2,
    # so e ≥ 5 s: 8 s to the window's end plus 5 s.
    denied = bucket(EPOCH_NS + 2 * NS, 8)
    assert (denied.allowed, denied.remaining, denied.retry_after_ms) == (False, 6, 13_000)
    assert bucket(EPOCH_NS + 15 * NS - 1, 8).allowed is False
    assert bucket(EPOCH_NS + 15 * NS, 8).allowed is True


# Several bands.


def test_fixed_window_bands_deny_together_and_charge_nothing() -> None:
    bucket = Bucket(
        policy("fixed_window", bands=[{"limit": 3, "window": "1s"}, {"limit": 5, "window": "1m"}])
    )
    assert [bucket(EPOCH_NS).remaining for _ in range(3)] == [2, 1, 0]
    per_second = bucket(EPOCH_NS)
    assert (per_second.allowed, per_second.band.window_seconds) == (False, 1.0)
    assert per_second.retry_after_ms == 1_000

    assert [bucket(EPOCH_NS + NS).remaining for _ in range(2)] == [1, 0]
    assert bucket.remaining_per_band(EPOCH_NS + 1_500 * MS) == [1, 0]

    # The second band would take it; the minute band is spent, so nothing is charged.
    before = bucket.state
    denied = bucket(EPOCH_NS + 1_500 * MS)
    assert denied.allowed is False
    assert denied.band.window_seconds == 60.0
    assert (denied.remaining, denied.retry_after_ms, denied.limit) == (0, 58_500, 5)
    assert bucket.state is before
    assert bucket.remaining_per_band(EPOCH_NS + 1_500 * MS) == [1, 0]


def test_token_bucket_bands_deny_together_and_charge_nothing() -> None:
    bucket = Bucket(
        policy("token_bucket", bands=[{"limit": 3, "window": "1s"}, {"limit": 5, "window": "1m"}])
    )
    assert [bucket(EPOCH_NS).remaining for _ in range(3)] == [2, 1, 0]
    assert [bucket(EPOCH_NS + NS).remaining for _ in range(2)] == [1, 0]
    assert bucket.remaining_per_band(EPOCH_NS + NS) == [1, 0]

    before = bucket.state
    denied = bucket(EPOCH_NS + NS)
    assert denied.allowed is False
    assert denied.band.window_seconds == 60.0
    # The minute band holds 1/12 unit; a whole one takes 11 s more.
    assert (denied.remaining, denied.retry_after_ms) == (0, 11_000)
    assert bucket.state is before
    assert bucket.remaining_per_band(EPOCH_NS + NS) == [1, 0]
    assert bucket(EPOCH_NS + 12 * NS).allowed is True


# Calendar windows.


def test_calendar_day_resets_exactly_at_utc_midnight() -> None:
    bucket = Bucket(policy("fixed_window", limit=2, window="day", calendar=True))
    midnight = utc_ns(2027, 3, 11)
    first = bucket(utc_ns(2027, 3, 10, 18))
    assert (first.remaining, first.reset_seconds, first.reset_time) == (1, 6 * 3600, midnight // NS)
    assert bucket(utc_ns(2027, 3, 10, 18)).remaining == 0

    last_moment = bucket(midnight - 1)
    assert (last_moment.allowed, last_moment.retry_after_ms, last_moment.reset_seconds) == (
        False,
        1,
        1,
    )
    next_day = bucket(midnight)
    assert (next_day.allowed, next_day.remaining, next_day.reset_seconds) == (True, 1, 86_400)


def test_calendar_day_boundary_is_exact_on_a_cold_cache() -> None:
    day = policy("fixed_window", limit=1, window="day", calendar=True)
    midnight = utc_ns(2027, 3, 11)
    spent, state = decide(day, None, utc_ns(2027, 3, 10, 12), 1)
    assert spent.allowed
    # Another bucket of another day is decided in between (any tenant will do).
    decide(day, None, utc_ns(2027, 6, 1, 12), 1)

    decision, _ = decide(day, state, midnight - 1, 1)
    assert decision.allowed is False
    assert decision.reset_seconds == 1


def test_calendar_week_starts_on_monday() -> None:
    bucket = Bucket(policy("fixed_window", limit=1, window="week", calendar=True))
    wednesday = utc_ns(2027, 1, 13, 12)
    monday = utc_ns(2027, 1, 18)
    assert datetime.fromtimestamp(monday // NS, UTC).weekday() == 0

    first = bucket(wednesday)
    assert (first.allowed, first.reset_time) == (True, monday // NS)
    assert first.reset_seconds == (monday - wednesday) // NS
    sunday_night = bucket(monday - NS)
    assert (sunday_night.allowed, sunday_night.retry_after_ms) == (False, 1_000)
    next_week = bucket(monday)
    assert (next_week.allowed, next_week.reset_seconds) == (True, 7 * 86_400)


def test_calendar_month_rolls_december_into_january() -> None:
    bucket = Bucket(policy("fixed_window", limit=1, window="month", calendar=True))
    new_year = utc_ns(2027, 1, 1)
    december = bucket(utc_ns(2026, 12, 15))
    assert (december.allowed, december.reset_time) == (True, new_year // NS)
    assert december.reset_seconds == 17 * 86_400
    new_years_eve = bucket(new_year - NS)
    assert (new_years_eve.allowed, new_years_eve.retry_after_ms) == (False, 1_000)
    january = bucket(new_year)
    assert (january.allowed, january.reset_seconds) == (True, 31 * 86_400)
    assert january.reset_time == utc_ns(2027, 2, 1) // NS


@pytest.mark.parametrize(("year", "days"), [(2027, 28), (2028, 29)])
def test_calendar_month_follows_february_length(year: int, days: int) -> None:
    bucket = Bucket(policy("fixed_window", limit=1, window="month", calendar=True))
    february = bucket(utc_ns(year, 2, 1))
    assert february.reset_seconds == days * 86_400
    assert bucket(utc_ns(year, 3, 1) - 1).allowed is False
    assert bucket(utc_ns(year, 3, 1)).allowed is True


def test_calendar_year_resets_on_january_first() -> None:
    bucket = Bucket(policy("fixed_window", limit=1, window="year", calendar=True))
    assert bucket(utc_ns(2027, 7, 1)).reset_time == utc_ns(2028, 1, 1) // NS
    assert bucket(utc_ns(2028, 1, 1) - NS).allowed is False
    assert bucket(utc_ns(2028, 1, 1)).reset_seconds == 366 * 86_400


# Policy changes keep what was spent.


def spend(table: BucketTable, policy: Policy, cost: int, now_ns: int = EPOCH_NS) -> None:
    assert table.decide(policy, "acme", "demo", now_ns, cost).allowed


def remaining(table: BucketTable, policy: Policy, now_ns: int = EPOCH_NS) -> int:
    return table.peek(policy, "acme", "demo", now_ns)[0].remaining


def test_token_bucket_raised_limit_keeps_spent_units() -> None:
    table = BucketTable(100)
    spend(table, policy("token_bucket", limit=10, window="1m"), 7)
    raised = policy("token_bucket", limit=20, window="1m")
    assert remaining(table, raised) == 13
    decision = table.decide(raised, "acme", "demo", EPOCH_NS, 13)
    assert (decision.allowed, decision.remaining) == (True, 0)


def test_token_bucket_lowered_limit_does_not_refill() -> None:
    table = BucketTable(100)
    spend(table, policy("token_bucket", limit=10, window="1m"), 7)
    lowered = policy("token_bucket", limit=5, window="1m")
    assert remaining(table, lowered) == 0
    denied = table.decide(lowered, "acme", "demo", EPOCH_NS, 1)
    # 7 spent against a capacity of 5: three units must refill, at 12 s each.
    assert (denied.allowed, denied.remaining, denied.retry_after_ms) == (False, 0, 36_000)
    assert table.decide(lowered, "acme", "demo", EPOCH_NS + 36 * NS, 1).allowed


def test_token_bucket_raised_burst_keeps_spent_units() -> None:
    table = BucketTable(100)
    spend(table, policy("token_bucket", limit=10, window="1m"), 7)
    assert remaining(table, policy("token_bucket", limit=10, window="1m", burst=20)) == 13


def test_fixed_window_with_the_same_window_keeps_its_count() -> None:
    table = BucketTable(100)
    spend(table, policy("fixed_window", limit=10, window="1m"), 3)
    assert remaining(table, policy("fixed_window", limit=20, window="1m"), EPOCH_NS + 10 * NS) == 17
    lowered = policy("fixed_window", limit=2, window="1m")
    denied = table.decide(lowered, "acme", "demo", EPOCH_NS + 10 * NS, 1)
    assert (denied.allowed, denied.remaining, denied.retry_after_ms) == (False, 0, 50_000)


ALGORITHM_NAMES = ("token_bucket", "fixed_window", "sliding_window")


@pytest.mark.parametrize(("old", "new"), list(permutations(ALGORITHM_NAMES, 2)))
def test_change_of_algorithm_never_refills(old: str, new: str) -> None:
    table = BucketTable(100)
    spend(table, policy(old, limit=10, window="1m"), 7)
    changed = policy(new, limit=10, window="1m")
    assert remaining(table, changed) == 3
    assert table.decide(changed, "acme", "demo", EPOCH_NS, 4).allowed is False
    assert table.decide(changed, "acme", "demo", EPOCH_NS, 3).remaining == 0


def test_change_from_one_band_to_two_carries_the_nearest_window() -> None:
    table = BucketTable(100)
    spend(table, policy("fixed_window", limit=10, window="1m"), 7)
    two_bands = policy(
        "fixed_window", bands=[{"limit": 5, "window": "1s"}, {"limit": 10, "window": "1m"}]
    )
    quotas = table.peek(two_bands, "acme", "demo", EPOCH_NS)[1]
    # The 1 s band takes over the spent units of the nearest old window: never a refill.
    assert [quota.remaining for quota in quotas] == [0, 3]
