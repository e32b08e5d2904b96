"""STRONG mode's failure handling, against a fake remote backend under a virtual clock."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing

from helios.backends.breaker import CircuitBreaker, CircuitState
from helios.backends.memory import BucketTable
from helios.core.decision import BandQuota, Decision
from helios.core.policy import Policy
from helios.errors import BackendError
from helios.gateway.auth import KeyRing
from helios.gateway.service import Check, Clock, Gateway
from unit.support import EPOCH_NS, policy_set


class FakeRemote:
    """A remote backend made of a bucket table that can be made to fail or hang."""

    def __init__(self) -> None:
        self.table = BucketTable(1000)
        self.failing = False
        self.hanging = False
        self.calls = 0
        self.pings = 0

    async def _trouble(self) -> None:
        if self.hanging:
            # A backend times out on its own (see RemoteBackend).
            await trio.sleep(0.05)
            raise BackendError("timed out after 50 ms")
        if self.failing:
            raise BackendError("connection refused")

    async def decide(
        self,
        policy: Policy,
        tenant: str,
        resource: str,
        cost: int,
        previous: Sequence[Policy] = (),
    ) -> Decision:
        self.calls += 1
        await self._trouble()
        decision = self.table.decide(policy, tenant, resource, EPOCH_NS, cost)
        decision.mode = "strong"
        return decision

    async def peek(
        self, policy: Policy, tenant: str, resource: str, previous: Sequence[Policy] = ()
    ) -> tuple[Decision, list[BandQuota]]:
        await self._trouble()
        decision, bands = self.table.peek(policy, tenant, resource, EPOCH_NS)
        decision.mode = "strong"
        return decision, bands

    async def ping(self) -> None:
        self.pings += 1
        await self._trouble()


def gateway_with(remote: FakeRemote, failure_mode: str, **breaker: Any) -> Gateway:
    policies = policy_set(
        {
            "tenant": "acme",
            "resource": "*",
            "limit": 3,
            "window": "1m",
            "failure_mode": failure_mode,
        }
    )
    return Gateway(
        policies,
        BucketTable(100),
        KeyRing(["k"]),
        Clock(EPOCH_NS),
        mode="strong",
        remote=remote,
        breaker=CircuitBreaker(**breaker),
        remote_timeout_seconds=0.05,
    )


CHECK = Check("acme", "search", 1)


async def test_a_healthy_remote_decides() -> None:
    remote = FakeRemote()
    gateway = gateway_with(remote, "local")
    decision = await gateway.decide_remote(CHECK, None)
    assert (decision.mode, decision.remaining, remote.calls) == ("strong", 2, 1)


async def test_local_failure_mode_decides_from_memory_and_says_so() -> None:
    remote = FakeRemote()
    remote.failing = True
    gateway = gateway_with(remote, "local")
    modes = [(await gateway.decide_remote(CHECK, None)) for _ in range(4)]
    assert [(d.mode, d.allowed, d.remaining) for d in modes] == [
        ("local", True, 2),
        ("local", True, 1),
        ("local", True, 0),
        ("local", False, 0),
    ]
    assert gateway.modes == {"local": 4}
    assert gateway.backend_errors == {"BackendError": 4}


async def test_open_failure_mode_allows_and_says_so() -> None:
    remote = FakeRemote()
    remote.failing = True
    gateway = gateway_with(remote, "open")
    for _ in range(5):
        decision = await gateway.decide_remote(CHECK, None)
        assert (decision.allowed, decision.mode) == (True, "open")


async def test_closed_failure_mode_answers_unavailable_with_retry_after() -> None:
    remote = FakeRemote()
    remote.failing = True
    gateway = gateway_with(remote, "closed")
    with pytest.raises(BackendError) as raised:
        await gateway.decide_remote(CHECK, None)
    assert raised.value.http_status == 503
    assert raised.value.retry_after_seconds >= 1


async def test_a_hanging_remote_costs_at_most_the_timeout_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    remote = FakeRemote()
    remote.hanging = True
    gateway = gateway_with(remote, "local")
    started = trio.current_time()
    decision = await gateway.decide_remote(CHECK, None)
    assert decision.mode == "local"
    assert trio.current_time() - started <= 2 * 0.05 + 1e-9


async def test_the_circuit_opens_fails_fast_and_closes_after_recovery(
    autojump_clock: trio.testing.MockClock,
) -> None:
    remote = FakeRemote()
    remote.failing = True
    gateway = gateway_with(remote, "local", failure_threshold=3, cooldown_seconds=1.0)
    for _ in range(3):
        await gateway.decide_remote(CHECK, None)
    assert gateway.breaker.state is CircuitState.OPEN
    assert gateway.ready_problems()

    # While open, calls do not touch the remote at all.
    for _ in range(10):
        assert (await gateway.decide_remote(CHECK, None)).mode == "local"
    assert remote.calls == 3

    async with trio.open_nursery() as nursery:
        nursery.start_soon(gateway.probe_remote)
        await trio.sleep(2)
        assert gateway.breaker.state is not CircuitState.CLOSED  # still failing
        remote.failing = False
        await trio.sleep(1)
        assert gateway.breaker.state is CircuitState.CLOSED
        nursery.cancel_scope.cancel()
    assert remote.pings > 1
    assert gateway.ready_problems() == []
    assert (await gateway.decide_remote(CHECK, None)).mode == "strong"


async def test_quota_falls_back_like_decisions() -> None:
    remote = FakeRemote()
    remote.failing = True
    gateway = gateway_with(remote, "local")
    quota = await gateway.quota_remote("acme", "search", None)
    assert (quota.decision.mode, quota.decision.remaining) == ("local", 3)
    closed = gateway_with(remote, "closed")
    with pytest.raises(BackendError):
        await closed.quota_remote("acme", "search", None)


def test_breaker_transitions() -> None:
    changes: list[CircuitState] = []
    breaker = CircuitBreaker(failure_threshold=2, cooldown_seconds=1.0, on_change=changes.append)
    breaker.failure(0.0)
    assert breaker.state is CircuitState.CLOSED
    breaker.failure(0.1)
    assert breaker.state is CircuitState.OPEN
    assert not breaker.allows(0.5)
    assert breaker.allows(1.2)
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.failure(1.3)
    assert breaker.state is CircuitState.OPEN
    assert not breaker.allows(2.0)
    assert breaker.allows(math.inf)
    breaker.success()
    assert breaker.state is CircuitState.CLOSED
    assert changes == [
        CircuitState.OPEN,
        CircuitState.HALF_OPEN,
        CircuitState.OPEN,
        CircuitState.HALF_OPEN,
        CircuitState.CLOSED,
    ]
    assert breaker.statistics().opened == 2
