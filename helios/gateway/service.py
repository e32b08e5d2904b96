"""The gateway's decision service, shared by every transport (HTTP, gRPC).

It validates input, checks the API key, resolves the policy and asks the
backend; it keeps the counters that metrics read at scrape time. It knows
nothing of HTTP or gRPC.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

import trio

from helios.backends.memory import BucketTable
from helios.core.decision import BandQuota, Decision
from helios.core.names import check_name
from helios.core.policy import Policy, PolicySet, validate_cost
from helios.errors import HeliosError, NotFound
from helios.gateway.auth import KeyRing


class Clock:
    """Wall-clock time in integer nanoseconds, driven by trio's clock.

    The offset between trio's monotonic clock and the Unix epoch is fixed when
    the clock is made, so time never runs backwards inside a process even if
    the system clock is stepped; tests fix the offset and drive trio's
    ``MockClock``.
    """

    def __init__(self, epoch_offset_ns: int | None = None) -> None:
        self._offset = epoch_offset_ns

    def now_ns(self) -> int:
        monotonic_ns = round(trio.current_time() * 1e9)
        if self._offset is None:
            self._offset = time.time_ns() - monotonic_ns
        return self._offset + monotonic_ns


class Check(NamedTuple):
    """One request for a decision, as a transport received it.

    A named tuple rather than a frozen dataclass: one is built per request.
    """

    tenant: object
    resource: object
    cost: int


@dataclass(frozen=True, slots=True)
class Quota:
    tenant: str
    resource: str
    decision: Decision
    bands: list[BandQuota]


class Gateway:
    """Decides requests against the current policies (FAST mode: in memory)."""

    def __init__(
        self,
        policies: PolicySet,
        table: BucketTable,
        keys: KeyRing,
        clock: Clock,
        *,
        role: str = "gateway",
        mode: str = "fast",
    ) -> None:
        self.policies = policies
        self.table = table
        self.keys = keys
        self.clock = clock
        self.role = role
        self.mode = mode
        # Counters read at scrape time; plain integers keep the hot path cheap.
        self.allowed = 0
        self.denied = 0
        self.shadow_denied = 0
        self.policy_reloads = 0

    def set_policies(self, policies: PolicySet) -> None:
        """Switch to new policies; buckets keep their spent units."""
        self.policies = policies
        self.policy_reloads += 1

    def resolve(self, tenant: str, resource: object) -> tuple[str, str, Policy]:
        """Find the policy for a pair; ``tenant`` has been checked already."""
        resource = check_name(resource, "resource")
        policy = self.policies.resolve(tenant, resource)
        if policy is None:
            raise NotFound(
                f"no policy matches tenant {tenant!r} and resource {resource!r}",
                field="resource",
            )
        return tenant, resource, policy

    def identify(self, api_key: str | None) -> str | None:
        """Who an API key speaks for: a tenant, or ``None`` for every tenant.

        Transports call this before looking at anything else in a request, so
        that a caller without a valid key learns nothing from validation.
        """
        return self.keys.identify(api_key)

    def allow(self, check: Check, api_key: str | None) -> Decision:
        """Decide one check: authorize, validate, then charge or deny."""
        return self.decide(check, self.keys.identify(api_key))

    def decide(self, check: Check, owner: str | None) -> Decision:
        """Decide one check for an identified caller (see :meth:`identify`)."""
        tenant = check_name(check.tenant, "tenant")
        self.keys.permit(owner, tenant)
        tenant, resource, policy = self.resolve(tenant, check.resource)
        validate_cost(policy, check.cost)
        decision = self.table.decide(policy, tenant, resource, self.clock.now_ns(), check.cost)
        self._count(decision)
        return decision

    def decide_batch(self, checks: list[Check], owner: str | None) -> list[Decision | HeliosError]:
        """Decide each check in order, each on its own; an error answers only its check."""
        results: list[Decision | HeliosError] = []
        for check in checks:
            try:
                results.append(self.decide(check, owner))
            except HeliosError as error:
                results.append(error)
        return results

    def quota(self, tenant: object, resource: object, owner: str | None) -> Quota:
        """The current figures of a bucket, charging nothing."""
        tenant = check_name(tenant, "tenant")
        self.keys.permit(owner, tenant)
        tenant, resource, policy = self.resolve(tenant, resource)
        decision, bands = self.table.peek(policy, tenant, resource, self.clock.now_ns())
        return Quota(tenant, resource, decision, bands)

    def _count(self, decision: Decision) -> None:
        if decision.would_allow:
            self.allowed += 1
        elif decision.allowed:
            self.shadow_denied += 1
        else:
            self.denied += 1

    def ready_problems(self) -> list[str]:
        """Why the gateway cannot serve decisions yet (empty when ready)."""
        problems = []
        if not len(self.policies):
            problems.append("no policies loaded")
        if self.keys.empty and not self.keys.disabled:
            problems.append("no API keys configured (set HELIOS_ALLOWED_API_KEYS)")
        return problems
