"""AllowBatch's lean path gives what deciding and answering each check alone gives.

The batch path resolves each pair once, reads the clock once and builds its
results from templates; these tests hold it to the one-check path: the same
decisions, errors and counters as :meth:`Gateway.decide` check by check, and
the same fields as :func:`decision_message`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from helios.core.decision import Decision
from helios.core.names import MAX_COST
from helios.errors import HeliosError
from helios.gateway.service import Check, Gateway
from helios.grpc.generated.helios.v1 import ratelimit_pb2 as pb
from helios.grpc.server import HeliosServicer, _Calls, batch_message, decision_message
from tests.unit.support import API_KEY, make_gateway, policy_set

POLICIES = (
    {"tenant": "acme", "resource": "demo", "algorithm": "fixed_window", "limit": 3, "window": "1m"},
    {"tenant": "acme", "resource": "tb", "algorithm": "token_bucket", "limit": 5, "window": "1s"},
    {
        "tenant": "acme",
        "resource": "shadow",
        "algorithm": "fixed_window",
        "limit": 1,
        "window": "1m",
        "shadow": True,
    },
    {
        "tenant": "acme",
        "resource": "bands",
        "algorithm": "sliding_window",
        "bands": [{"limit": 2, "window": "1s"}, {"limit": 4, "window": "1m"}],
    },
    {"tenant": "globex", "resource": "*", "algorithm": "fixed_window", "limit": 2, "window": "1m"},
)

# Repeats, denials, a shadow denial, two bands, and every kind of error: a bad
# tenant or resource (one unhashable, as JSON can send), a tenant the key may
# not use, no policy, a cost no band can take, and a full table (max_buckets).
CHECKS: list[tuple[object, object, int]] = [
    ("acme", "demo", 1),
    ("acme", "demo", 2),
    ("acme", "demo", 1),
    ("acme", "tb", 4),
    ("acme", "tb", 2),
    ("acme", "tb", 1),
    ("acme", "shadow", 1),
    ("acme", "shadow", 1),
    ("acme", "bands", 2),
    ("acme", "bands", 1),
    ("", "demo", 1),
    ("acme", ["demo"], 1),
    ("acme", "nothing", 1),
    ("acme", "demo", 4),
    ("globex", "a", 1),
    ("acme", "x\x00", 1),
    ("acme", "demo", 1),
]


def _figures(outcome: Decision | HeliosError) -> tuple[Any, ...]:
    if isinstance(outcome, HeliosError):
        return (type(outcome), outcome.message, outcome.field)
    return (
        outcome.policy.name,
        outcome.band.describe(),
        outcome.allowed,
        outcome.would_allow,
        outcome.remaining,
        outcome.retry_after_ms,
        outcome.retry_after_seconds,
        outcome.reset_seconds,
        outcome.reset_time,
        outcome.mode,
    )


def _one_by_one(gateway: Gateway, checks: list[Check], owner: str | None) -> list[Any]:
    outcomes: list[Decision | HeliosError] = []
    for check in checks:
        try:
            outcomes.append(gateway.decide(check, owner))
        except HeliosError as error:
            outcomes.append(error)
    return outcomes


def _counters(gateway: Gateway) -> tuple[Any, ...]:
    return (gateway.allowed, gateway.denied, gateway.shadow_denied, gateway.modes)


def _frozen(test: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Run ``test`` with time stopped: checks decided one by one then share an instant."""
    return lambda: trio.run(test, clock=trio.testing.MockClock())


@_frozen
async def test_a_batch_decides_as_its_checks_one_by_one() -> None:
    for owner in (None, "acme"):
        # Room for four buckets: the fifth pair finds the table full.
        batched = make_gateway(*POLICIES, max_buckets=4)
        alone = make_gateway(*POLICIES, max_buckets=4)
        checks = [Check(*check) for check in CHECKS]
        got = batched.decide_batch(checks, owner)
        expected = _one_by_one(alone, checks, owner)
        assert [_figures(o) for o in got] == [_figures(o) for o in expected]
        assert _counters(batched) == _counters(alone)
    kinds = {type(outcome).__name__ for outcome in got}
    assert {"Decision", "InvalidRequest", "NotFound", "PermissionDenied"} <= kinds


@_frozen
async def test_a_full_table_refuses_only_new_pairs_in_a_batch() -> None:
    batched = make_gateway(*POLICIES, max_buckets=1)
    alone = make_gateway(*POLICIES, max_buckets=1)
    checks = [Check("acme", "demo", 1), Check("acme", "tb", 1), Check("acme", "demo", 1)]
    got = batched.decide_batch(checks, None)
    assert [_figures(o) for o in got] == [_figures(o) for o in _one_by_one(alone, checks, None)]
    assert type(got[1]).__name__ == "CapacityExhausted"


@_frozen
async def test_batch_results_are_the_decision_messages() -> None:
    gateway = make_gateway(*POLICIES)
    checks = [
        (str(tenant), str(resource), cost)
        for tenant, resource, cost in CHECKS
        if isinstance(resource, str)
    ]
    outcomes = gateway.decide_batch(checks, None)
    reply = batch_message(checks, outcomes)
    assert len(reply.results) == len(checks)
    denied = shadow = errors = 0
    for (tenant, resource, _), outcome, result in zip(checks, outcomes, reply.results, strict=True):
        if isinstance(outcome, Decision):
            assert result == decision_message(tenant, resource, outcome)
            assert not result.HasField("error")
            denied += not outcome.would_allow
            shadow += outcome.policy.shadow and not outcome.would_allow
        else:
            errors += 1
            expected = pb.CheckError(
                code=outcome.grpc_code, message=outcome.message, field=outcome.field or ""
            )
            assert result == pb.Decision(error=expected)
    assert denied and shadow and errors


@_frozen
async def test_an_invalid_cost_answers_only_its_check() -> None:
    gateway = make_gateway(*POLICIES)
    servicer = HeliosServicer(gateway, _Calls(), max_batch_checks=10)
    message = pb.AllowBatchRequest(
        checks=[
            pb.AllowRequest(tenant="acme", resource="demo"),
            pb.AllowRequest(tenant="acme", resource="demo", cost=MAX_COST + 1),
            pb.AllowRequest(tenant="acme", cost=1),
            pb.AllowRequest(tenant="acme", resource="demo", cost=2),
        ]
    )
    reply = await servicer._allow_batch(message, API_KEY)
    first, invalid, default, last = reply.results
    assert (first.allowed, first.remaining, first.tenant, first.resource) == (
        True,
        2,
        "acme",
        "demo",
    )
    assert invalid == pb.Decision(
        error=pb.CheckError(
            code="INVALID_ARGUMENT",
            message=f"cost must be an integer from 1 to {MAX_COST}, got {MAX_COST + 1}",
            field="cost",
        )
    )
    # An empty resource is "default"; no policy matches it.
    assert (default.error.code, default.error.field) == ("NOT_FOUND", "resource")
    assert (last.allowed, last.remaining) == (True, 0)


# Policies a batch may be decided under, and what replaces them between
# batches: the same shape with another limit, another window, another
# algorithm, and one band more, so that the first check of a pair in a batch
# may carry units over from the policy that wrote its bucket.
SHAPES = (
    {"algorithm": "token_bucket", "limit": 5, "window": "1m"},
    {"algorithm": "token_bucket", "limit": 7, "window": "1m", "burst": 9},
    {"algorithm": "fixed_window", "limit": 6, "window": "10s"},
    {"algorithm": "sliding_window", "limit": 4, "window": "1s"},
    {
        "algorithm": "fixed_window",
        "bands": [{"limit": 3, "window": "1s"}, {"limit": 8, "window": "1m"}],
    },
)
PAIRS = (("acme", "a"), ("acme", "b"), ("globex", "a"))
# Checks come in runs of one pair, as batches mostly send them.
RUN = st.tuples(
    st.sampled_from(PAIRS), st.lists(st.integers(min_value=1, max_value=10), min_size=1, max_size=8)
)
ROUND = st.tuples(
    st.sampled_from(range(len(SHAPES))),
    st.integers(min_value=0, max_value=3_000),  # ms since the previous round
    st.lists(RUN, min_size=1, max_size=6),
)


@settings(deadline=None, max_examples=150)
@given(st.lists(ROUND, min_size=1, max_size=4), st.integers(min_value=1, max_value=3))
def test_batches_under_changing_policies_decide_as_their_checks_one_by_one(
    rounds: list[tuple[int, int, list[tuple[tuple[str, str], list[int]]]]], max_buckets: int
) -> None:
    async def scenario() -> None:
        batched = make_gateway(max_buckets=max_buckets)
        alone = make_gateway(max_buckets=max_buckets)
        for shape, pause_ms, runs in rounds:
            await trio.sleep(pause_ms / 1000)
            for gateway in (batched, alone):
                gateway.set_policies(policy_set({"tenant": "*", "resource": "*", **SHAPES[shape]}))
            checks = [
                (tenant, resource, cost) for (tenant, resource), costs in runs for cost in costs
            ]
            got = batched.decide_batch(checks, None)
            expected = _one_by_one(alone, [Check(*check) for check in checks], None)
            assert [_figures(o) for o in got] == [_figures(o) for o in expected]
            assert _counters(batched) == _counters(alone)
            reply = batch_message(checks, got)
            for (tenant, resource, _), outcome, result in zip(
                checks, got, reply.results, strict=True
            ):
                if isinstance(outcome, Decision):
                    assert result == decision_message(tenant, resource, outcome)
                else:
                    assert result.error.message == outcome.message

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
