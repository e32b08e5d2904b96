"""Invariants of the decision core and the data plane, as hypothesis properties.

- never more admitted than the algorithm allows over any interval;
- the decisions match an exact reference model (rational arithmetic);
- ``retry_after_ms`` is exact: the same request fails 1 ms earlier and succeeds then;
- a denied request changes nothing;
- decisions do not depend on how requests are spread over connections.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from itertools import accumulate
from typing import Any

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from helios.core.decision import BucketState, Decision, decide
from helios.core.policy import Policy, parse_policy
from helios.gateway.service import Check

from .support import (
    API_KEY,
    EPOCH_NS,
    PROPERTY,
    allow_target,
    make_gateway,
    make_server,
    open_connection,
    request_bytes,
)

MS = 1_000_000
WINDOWS_MS = [1, 250, 1_000, 10_000, 60_000]


@dataclass
class Scenario:
    policy: Policy
    # (absolute time in ns, cost), in time order.
    requests: list[tuple[int, int]]


@st.composite
def scenarios(draw: st.DrawFn, algorithm: str, *, bands: int = 1) -> Scenario:
    raw_bands = []
    for _ in range(bands):
        band: dict[str, Any] = {
            "limit": draw(st.integers(1, 10)),
            "window": f"{draw(st.sampled_from(WINDOWS_MS))}ms",
        }
        if algorithm == "token_bucket" and draw(st.booleans()):
            band["burst"] = draw(st.integers(1, 20))
        raw_bands.append(band)
    policy = parse_policy(
        {"tenant": "t", "resource": "r", "algorithm": algorithm, "bands": raw_bands}
    )
    longest = max(band.window_ns for band in policy.bands)
    start = EPOCH_NS + draw(st.integers(0, longest))
    gaps = draw(
        st.lists(
            st.one_of(st.just(0), st.integers(1, longest // 4 + 1), st.integers(1, 2 * longest)),
            min_size=1,
            max_size=50,
        )
    )
    costs = draw(st.lists(st.integers(1, policy.capacity), min_size=len(gaps), max_size=len(gaps)))
    times = [start + offset for offset in accumulate(gaps)]
    return Scenario(policy, list(zip(times, costs, strict=True)))


def run(
    scenario: Scenario,
) -> list[tuple[int, int, Decision, BucketState | None, BucketState | None]]:
    """Decide every request in order: (time, cost, decision, state before, state after)."""
    state: BucketState | None = None
    results = []
    for now_ns, cost in scenario.requests:
        decision, new_state = decide(scenario.policy, state, now_ns, cost)
        results.append((now_ns, cost, decision, state, new_state))
        state = new_state
    return results


def admitted(results: list[tuple[int, int, Decision, Any, Any]]) -> list[tuple[int, int]]:
    return [(now_ns, cost) for now_ns, cost, decision, _, _ in results if decision.allowed]


def intervals(points: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Every interval between two admitted requests: (start, end, cost admitted within)."""
    found = []
    for i, (start, _) in enumerate(points):
        total = 0
        for end, cost in points[i:]:
            total += cost
            found.append((start, end, total))
    return found


# (a) Never more admitted than the algorithm allows over any interval.


@PROPERTY
@given(scenarios("token_bucket"))
def test_token_bucket_admits_at_most_burst_plus_rate_times_length(scenario: Scenario) -> None:
    [band] = scenario.policy.bands
    for start, end, total in intervals(admitted(run(scenario))):
        # total ≤ burst + limit × (end − start) / window, multiplied through by the window.
        assert total * band.window_ns <= band.burst * band.window_ns + band.limit * (end - start)


@PROPERTY
@given(scenarios("fixed_window"))
def test_fixed_window_admits_at_most_limit_per_window_touched(scenario: Scenario) -> None:
    [band] = scenario.policy.bands
    points = admitted(run(scenario))
    for start, end, total in intervals(points):
        touched = end // band.window_ns - start // band.window_ns + 1
        assert total <= band.limit * touched
    per_window: dict[int, int] = defaultdict(int)
    for now_ns, cost in points:
        per_window[now_ns // band.window_ns] += cost
    assert all(total <= band.limit for total in per_window.values())


@PROPERTY
@given(scenarios("sliding_window"))
def test_sliding_window_admits_at_most_limit_per_window_touched(scenario: Scenario) -> None:
    [band] = scenario.policy.bands
    points = admitted(run(scenario))
    for start, end, total in intervals(points):
        touched = end // band.window_ns - start // band.window_ns + 1
        assert total <= band.limit * touched
    # Any span of one window length overlaps at most two aligned windows, and the
    # estimate keeps their weighted sum within the limit: never more than 2 × limit.
    for start, end, total in intervals(points):
        if end - start < band.window_ns:
            assert total <= 2 * band.limit


# Exact reference models, in rational arithmetic.


def token_bucket_model(scenario: Scenario) -> list[tuple[bool, int, int]]:
    [band] = scenario.policy.bands
    rate = Fraction(band.limit, band.window_ns)  # units per ns
    tokens, last = Fraction(band.burst), None
    answers = []
    for now_ns, cost in scenario.requests:
        if last is not None:
            tokens = min(Fraction(band.burst), tokens + (now_ns - last) * rate)
        last = now_ns
        if tokens >= cost:
            tokens -= cost
            answers.append((True, math.floor(tokens), 0))
        else:
            wait_ns = math.ceil((cost - tokens) / rate)
            answers.append((False, math.floor(tokens), math.ceil(Fraction(wait_ns, MS))))
    return answers


def fixed_window_model(scenario: Scenario) -> list[tuple[bool, int, int]]:
    [band] = scenario.policy.bands
    counts: dict[int, int] = defaultdict(int)
    answers = []
    for now_ns, cost in scenario.requests:
        index = now_ns // band.window_ns
        end = (index + 1) * band.window_ns
        if counts[index] + cost <= band.limit:
            counts[index] += cost
            answers.append((True, band.limit - counts[index], 0))
        else:
            answers.append(
                (False, band.limit - counts[index], math.ceil(Fraction(end - now_ns, MS)))
            )
    return answers


def sliding_window_model(scenario: Scenario) -> list[tuple[bool, int]]:
    [band] = scenario.policy.bands
    counts: dict[int, int] = defaultdict(int)
    answers = []
    for now_ns, cost in scenario.requests:
        index = now_ns // band.window_ns
        elapsed = Fraction(now_ns - index * band.window_ns, band.window_ns)
        estimate = counts[index - 1] * (1 - elapsed) + counts[index]
        if estimate + cost <= band.limit:
            counts[index] += cost
            answers.append((True, math.floor(band.limit - estimate - cost)))
        else:
            answers.append((False, max(0, math.floor(band.limit - estimate))))
    return answers


@PROPERTY
@given(scenarios("token_bucket"))
def test_token_bucket_matches_the_reference_model(scenario: Scenario) -> None:
    decisions = [(d.allowed, d.remaining, d.retry_after_ms) for _, _, d, _, _ in run(scenario)]
    assert decisions == token_bucket_model(scenario)


@PROPERTY
@given(scenarios("fixed_window"))
def test_fixed_window_matches_the_reference_model(scenario: Scenario) -> None:
    decisions = [(d.allowed, d.remaining, d.retry_after_ms) for _, _, d, _, _ in run(scenario)]
    assert decisions == fixed_window_model(scenario)


@PROPERTY
@given(scenarios("sliding_window"))
def test_sliding_window_matches_the_reference_model(scenario: Scenario) -> None:
    decisions = [(d.allowed, d.remaining) for _, _, d, _, _ in run(scenario)]
    assert decisions == sliding_window_model(scenario)


# retry_after_ms is exact.

ANY_POLICY = st.one_of(
    *(
        scenarios(algorithm, bands=bands)
        for algorithm in ("token_bucket", "fixed_window", "sliding_window")
        for bands in (1, 2, 3)
    )
)


@PROPERTY
@given(ANY_POLICY)
def test_retry_after_is_exact_to_the_millisecond(scenario: Scenario) -> None:
    for now_ns, cost, decision, state, _ in run(scenario):
        if decision.allowed:
            assert (decision.retry_after_ms, decision.retry_after_seconds) == (0, 0)
            continue
        wait_ns = decision.retry_after_ms * MS
        assert decision.retry_after_ms >= 1
        assert decision.retry_after_seconds == math.ceil(decision.retry_after_ms / 1000)
        assert decide(scenario.policy, state, now_ns + wait_ns, cost)[0].allowed
        assert not decide(scenario.policy, state, now_ns + wait_ns - MS, cost)[0].allowed


# (b) A denied request changes nothing.


@PROPERTY
@given(ANY_POLICY)
def test_denied_request_leaves_the_state_unchanged(scenario: Scenario) -> None:
    for _, _, decision, before, after in run(scenario):
        if not decision.allowed:
            assert after is before
            assert decision.remaining >= 0
        else:
            assert after is not before


@PROPERTY
@given(ANY_POLICY)
def test_remaining_describes_the_tightest_band(scenario: Scenario) -> None:
    for now_ns, _, decision, _, after in run(scenario):
        if decision.allowed:
            # The fewest units left of any band after the charge.
            quotas = decide(scenario.policy, after, now_ns, 0)[0]
            assert decision.remaining == quotas.remaining


# (c) The answer does not depend on how requests are spread over connections.

SPLIT_POLICIES = (
    {
        "tenant": "acme",
        "resource": "tb",
        "algorithm": "token_bucket",
        "limit": 3,
        "window": "1s",
        "burst": 4,
    },
    {
        "tenant": "acme",
        "resource": "fw",
        "algorithm": "fixed_window",
        "bands": [{"limit": 2, "window": "1s"}, {"limit": 5, "window": "10s"}],
    },
    {"tenant": "acme", "resource": "sw", "algorithm": "sliding_window", "limit": 4, "window": "2s"},
)


@dataclass(frozen=True)
class Timed:
    gap_ms: int
    resource: str
    cost: int
    connection: int


TIMED = st.builds(
    Timed,
    gap_ms=st.one_of(st.just(0), st.integers(1, 3_000)),
    resource=st.sampled_from(["tb", "fw", "sw"]),
    cost=st.integers(1, 2),
    connection=st.integers(0, 3),
)

Outcome = tuple[int, bool, int, int]


def outcome(status: int, document: dict[str, Any]) -> Outcome:
    return (status, document["allowed"], document["remaining"], document["retry_after_ms"])


async def _direct(sequence: list[Timed], clock: trio.testing.MockClock) -> list[Outcome]:
    gateway = make_gateway(*SPLIT_POLICIES)
    outcomes = []
    for item in sequence:
        clock.jump(item.gap_ms / 1000)
        decision = gateway.allow(Check("acme", item.resource, item.cost), API_KEY)
        outcomes.append(
            (
                200 if decision.allowed else 429,
                decision.allowed,
                decision.remaining,
                decision.retry_after_ms,
            )
        )
    return outcomes


async def _one_connection(sequence: list[Timed], clock: trio.testing.MockClock) -> list[Outcome]:
    """Every request on one connection, those at the same moment pipelined in one send."""
    gateway = make_gateway(*SPLIT_POLICIES)
    server = make_server(gateway)
    outcomes = []
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        index = 0
        while index < len(sequence):
            clock.jump(sequence[index].gap_ms / 1000)
            batch = [sequence[index]]
            index += 1
            while index < len(sequence) and sequence[index].gap_ms == 0:
                batch.append(sequence[index])
                index += 1
            await conn.send(
                b"".join(
                    request_bytes(
                        "GET", allow_target(tenant="acme", resource=item.resource, cost=item.cost)
                    )
                    for item in batch
                )
            )
            for _ in batch:
                response = await conn.read_response()
                outcomes.append(outcome(response.status, response.json))
        nursery.cancel_scope.cancel()
    return outcomes


async def _many_connections(sequence: list[Timed], clock: trio.testing.MockClock) -> list[Outcome]:
    """Each request on the connection it names, answered before the next is sent."""
    gateway = make_gateway(*SPLIT_POLICIES)
    server = make_server(gateway)
    outcomes = []
    async with trio.open_nursery() as nursery:
        connections = [open_connection(nursery, server) for _ in range(4)]
        for item in sequence:
            clock.jump(item.gap_ms / 1000)
            conn = connections[item.connection]
            if item.connection % 2:
                response = await conn.post_json(
                    "/api/v1/allow",
                    {"tenant": "acme", "resource": item.resource, "cost": item.cost},
                )
            else:
                response = await conn.get(
                    allow_target(tenant="acme", resource=item.resource, cost=item.cost)
                )
            outcomes.append(outcome(response.status, response.json))
        nursery.cancel_scope.cancel()
    return outcomes


def under_mock_clock(function: Any, sequence: list[Timed]) -> list[Outcome]:
    clock = trio.testing.MockClock()
    result: list[Outcome] = trio.run(function, sequence, clock, clock=clock)
    return result


@PROPERTY
@given(st.lists(TIMED, min_size=1, max_size=30))
def test_decisions_do_not_depend_on_how_requests_are_split_over_connections(
    sequence: list[Timed],
) -> None:
    direct = under_mock_clock(_direct, sequence)
    assert under_mock_clock(_one_connection, sequence) == direct
    assert under_mock_clock(_many_connections, sequence) == direct
