"""The gateway's decision service, shared by every transport (HTTP, gRPC).

It validates input, checks the API key, resolves the policy and asks the
backend; it keeps the counters that metrics read at scrape time. It knows
nothing of HTTP or gRPC.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol

import trio

from helios.backends.breaker import CircuitBreaker, CircuitState
from helios.backends.memory import BucketTable
from helios.core.decision import BandQuota, Decision, decide, inspect
from helios.core.names import bucket_key, check_name
from helios.core.policy import Policy, PolicySet, validate_cost
from helios.errors import BackendError, CapacityExhausted, HeliosError, NotFound
from helios.gateway.auth import KeyRing
from helios.gateway.tenants import ALLOWED, DENIED, SHADOW_DENIED, TenantCounts


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


class Ask(NamedTuple):
    """One check of several decided together, all or nothing (see :meth:`Gateway.decide_all`)."""

    policy: Policy
    tenant: str
    resource: str
    cost: int
    # What this check asks of its bucket: its cost and those of the checks
    # before it on the same bucket.
    units: int
    # For a remote backend: the policies ``policy`` recently replaced, newest first.
    previous: Sequence[Policy] = ()

    @property
    def never(self) -> bool:
        """True when the bucket cannot take ``units`` even when full."""
        return self.units > self.policy.capacity


class RemoteBackend(Protocol):
    """A backend that decides over the network (STRONG mode: Redis).

    Each call returns or raises :class:`~helios.errors.BackendError` within the
    backend's own timeout; the gateway adds no cancel scope of its own on the
    hot path (one costs several microseconds per decision).
    """

    async def decide(
        self,
        policy: Policy,
        tenant: str,
        resource: str,
        cost: int,
        previous: Sequence[Policy] = (),
    ) -> Decision:
        """Decide; ``previous``: the policies ``policy`` recently replaced, newest first."""
        ...

    async def peek(
        self, policy: Policy, tenant: str, resource: str, previous: Sequence[Policy] = ()
    ) -> tuple[Decision, list[BandQuota]]: ...

    async def decide_all(self, asks: Sequence[Ask]) -> list[Decision]:
        """Decide asks together, all or nothing, as :meth:`Gateway.decide_all` says.

        Per ask: its denial for its ``units`` when it does not fit; else its
        decision when the asks were charged, or its bucket's figures (for 0
        units) when they were not.
        """
        ...

    async def ping(self) -> None: ...

    async def reset(self, tenant: str, resource: str | None, policies: Sequence[Policy]) -> int:
        """Delete a tenant's buckets: one resource's (under ``policies``' shapes), or all."""
        ...


# How many replaced policies a remote backend is told of, newest first.
_MAX_PREDECESSORS = 4

_LONGEST_CALENDAR_SECONDS = {
    "day": 86_400,
    "week": 7 * 86_400,
    "month": 31 * 86_400,
    "year": 366 * 86_400,
}


def _state_lifetime_seconds(policy: Policy) -> float:
    """The longest a bucket state of ``policy`` can differ from a fresh one."""
    lifetimes: list[float] = []
    for band in policy.bands:
        if band.calendar is not None:
            lifetimes.append(_LONGEST_CALENDAR_SECONDS[band.calendar])
        elif policy.algorithm == "token_bucket":
            lifetimes.append(band.burst * band.window_seconds / band.limit)
        elif policy.algorithm == "sliding_window":
            lifetimes.append(2 * band.window_seconds)
        else:
            lifetimes.append(band.window_seconds)
    return max(lifetimes)


def _no_policy(tenant: str, resource: str) -> NotFound:
    return NotFound(
        f"no policy matches tenant {tenant!r} and resource {resource!r}", field="resource"
    )


def _settle(ask: Ask, decision: Decision) -> Decision:
    """What a check decided with others reports, from its bucket's decision
    (see :meth:`Gateway.decide_all`).

    A check that does not fit reports the units left for it: those of its
    bucket less what the checks before it ask. One that can never fit is a
    denial with its bucket's figures, to retry once the bucket is full again.
    """
    earlier = ask.units - ask.cost
    if ask.never:
        retry_after_seconds = max(1, decision.reset_seconds)
        return replace(
            decision,
            allowed=ask.policy.shadow,
            would_allow=False,
            remaining=max(0, decision.remaining - earlier),
            retry_after_ms=retry_after_seconds * 1000,
            retry_after_seconds=retry_after_seconds,
        )
    if decision.would_allow or not earlier:
        return decision
    return replace(decision, remaining=max(0, decision.remaining - earlier))


class Gateway:
    """Decides requests against the current policies.

    FAST mode decides in the in-memory table (:meth:`decide`, synchronous).
    STRONG mode decides in a remote backend (:meth:`decide_remote`); when the
    backend fails or its circuit is open, each policy's ``failure_mode`` says
    what to answer: ``local`` decides from the in-memory table, ``open``
    allows, ``closed`` answers 503.
    """

    def __init__(
        self,
        policies: PolicySet,
        table: BucketTable,
        keys: KeyRing,
        clock: Clock,
        *,
        role: str = "gateway",
        mode: str = "fast",
        remote: RemoteBackend | None = None,
        breaker: CircuitBreaker | None = None,
        remote_timeout_seconds: float = 0.05,
        tenant_counts: TenantCounts | None = None,
    ) -> None:
        self.policies = policies
        self.table = table
        self.keys = keys
        self.clock = clock
        self.role = role
        self.mode = mode
        self.remote = remote
        self.breaker = breaker or CircuitBreaker()
        self.remote_timeout_seconds = remote_timeout_seconds
        # Serial of a changed policy -> the policies it replaced, newest
        # first, each with the trio time until which its state may matter.
        self._predecessors: dict[int, list[tuple[Policy, float]]] = {}
        # Decisions made elsewhere than in memory (strong, local, open), by
        # mode (see the modes property), and remote failures by the error's
        # class name (RedisTimeout, ...).
        self._other_modes: dict[str, int] = {}
        self.backend_errors: dict[str, int] = {}
        # Counters read at scrape time; plain integers keep the hot path cheap.
        self.allowed = 0
        self.denied = 0
        self.shadow_denied = 0
        # Decisions that left less than a fifth of the tightest band, by
        # result (indexed as in helios.gateway.tenants.RESULTS).
        self.near_limit = [0, 0, 0]
        # Decisions by tenant, when the tenant-labelled metrics are on.
        self.tenant_counts = tenant_counts
        self.policy_reloads = 0
        # Why decisions may not be current though the gateway serves (stale policies).
        self.ready_warnings: Callable[[], list[str]] = list

    @property
    def modes(self) -> dict[str, int]:
        """Decisions by where they were made: fast (memory), strong, local, open.

        Fast decisions are not counted one by one: every decision is counted
        once as allowed, denied or shadow-denied, so they are the rest.
        """
        others = self._other_modes
        fast = self.allowed + self.denied + self.shadow_denied - sum(others.values())
        return {"fast": fast, **others} if fast else dict(others)

    def set_policies(self, policies: PolicySet) -> None:
        """Switch to new policies; buckets keep their spent units.

        In memory the bucket states carry their units over by themselves (see
        helios.core.decision.migrate). A remote backend is told, for a while,
        which policy each changed one replaced, so that it can carry units
        from the keys the old shape used.
        """
        now = trio.current_time()
        predecessors = {}
        for policy in policies:
            old = self.policies.find(policy.tenant, policy.resource)
            if old is None or old is policy:
                continue
            # The replaced policy, then those it replaced, while their state
            # may still matter (old keys expire by themselves once fresh).
            chain = [(old, now + _state_lifetime_seconds(old))]
            chain.extend(
                entry for entry in self._predecessors.get(old.serial, ()) if entry[1] >= now
            )
            predecessors[policy.serial] = chain[:_MAX_PREDECESSORS]
        self._predecessors = predecessors
        self.policies = policies
        self.policy_reloads += 1

    def _predecessors_of(self, policy: Policy) -> list[Policy]:
        chain = self._predecessors.get(policy.serial)
        if chain is None:
            return []
        now = trio.current_time()
        if chain[-1][1] < now:
            chain = [entry for entry in chain if entry[1] >= now]
            self._predecessors[policy.serial] = chain
        return [old for old, _ in chain]

    def resolve(self, tenant: str, resource: object) -> tuple[str, str, Policy]:
        """Find the policy for a pair; ``tenant`` has been checked already."""
        resource = check_name(resource, "resource")
        policy = self.policies.resolve(tenant, resource)
        if policy is None:
            raise _no_policy(tenant, resource)
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
        tenant, resource, policy = self._validate(check, owner)
        key = bucket_key(tenant, resource)
        decision = self.table.decide_key(policy, key, self.clock.now_ns(), check.cost)
        self._count(decision, tenant)
        return decision

    def _validate(self, check: Check, owner: str | None) -> tuple[str, str, Policy]:
        # The steps of permit, resolve and validate_cost, in their order, with
        # each call made only when it has something to reject: this runs on
        # every decision, and a call costs more than its test.
        tenant = check_name(check.tenant, "tenant")
        if owner is not None:
            self.keys.permit(owner, tenant)
        resource = check_name(check.resource, "resource")
        policy = self.policies.resolve(tenant, resource)
        if policy is None:
            raise _no_policy(tenant, resource)
        if check.cost > policy.capacity:
            validate_cost(policy, check.cost)
        return tenant, resource, policy

    async def decide_remote(self, check: Check, owner: str | None) -> Decision:
        """Decide one check in the remote backend, or as its failure mode says."""
        decision, _ = await self._decide_remote(check, owner, None)
        return decision

    async def _decide_remote(
        self, check: Check, owner: str | None, failed: BackendError | None
    ) -> tuple[Decision, BackendError | None]:
        """The decision, and the backend's failure if there was one.

        ``failed``: the backend already failed while serving this request (an
        earlier check of a batch); decide without asking it again, so that a
        request waits for one timeout at most.
        """
        tenant, resource, policy = self._validate(check, owner)
        assert self.remote is not None
        failure: BackendError
        if failed is not None:
            failure = failed
        elif self.breaker.allows(trio.current_time()):
            try:
                decision = await self.remote.decide(
                    policy, tenant, resource, check.cost, self._predecessors_of(policy)
                )
            except BackendError as error:
                failure = error
            else:
                self.breaker.success()
                self._count(decision, tenant)
                return decision, None
            self._backend_failed(failure)
        else:
            failure = BackendError("the rate-limit store is unavailable (circuit open)")
        decision = self._fallback(policy, tenant, resource, check.cost, failure)
        self._count(decision, tenant)
        return decision, failure

    def _backend_failed(self, error: BackendError) -> None:
        kind = type(error).__name__
        self.backend_errors[kind] = self.backend_errors.get(kind, 0) + 1
        self.breaker.failure(trio.current_time())

    def _fallback(
        self, policy: Policy, tenant: str, resource: str, cost: int, failure: BackendError
    ) -> Decision:
        if policy.failure_mode == "closed":
            raise failure
        if policy.failure_mode == "open":
            # Allowed without counting; the figures are those of a full bucket.
            decision = decide(policy, None, self.clock.now_ns(), cost)[0]
            decision.mode = "open"
            return decision
        decision = self.table.decide(policy, tenant, resource, self.clock.now_ns(), cost)
        decision.mode = "local"
        return decision

    async def decide_batch_remote(
        self, checks: list[Check], owner: str | None
    ) -> list[Decision | HeliosError]:
        """Like :meth:`decide_batch`, in the remote backend; in order.

        Once the backend fails for one check, the rest of the batch follows the
        failure modes at once: the whole batch waits for one timeout at most.
        """
        results: list[Decision | HeliosError] = []
        failed: BackendError | None = None
        for check in checks:
            try:
                decision, failure = await self._decide_remote(check, owner, failed)
            except BackendError as error:  # failure_mode "closed"
                failed = failed or error
                results.append(error)
            except HeliosError as error:
                results.append(error)
            else:
                failed = failed or failure
                results.append(decision)
        return results

    def decide_all(self, checks: Sequence[Check], owner: str | None) -> list[Decision | None]:
        """Decide checks together, all or nothing (Envoy's descriptors of one request).

        Each check asks its bucket for its units: its cost and the costs of
        the checks before it on the same bucket. It fits if the bucket can
        take them now. If every check fits (a shadow policy never stops the
        others), each bucket is charged the units of its last check that fits
        and each decision describes the bucket after the check's units. If
        not, nothing is charged: a check that fits reports its bucket as it
        is, and one that does not is denied with the units left for it after
        the checks before it. A check whose units exceed its policy's
        capacity never fits. A check that no policy matches gets ``None``.
        One instant decides them all.
        """
        asks = self._asks(checks, owner)
        now_ns = self.clock.now_ns()
        table = self.table
        # Per bucket: its figures now (for 0 units), and each band's.
        peeked: dict[tuple[str, str], tuple[Decision, list[BandQuota]]] = {}
        fits: list[bool] = []
        for ask in asks:
            if ask is None:
                fits.append(False)
                continue
            peek = peeked.get((ask.tenant, ask.resource))
            if peek is None:
                peek = table.peek(ask.policy, ask.tenant, ask.resource, now_ns)
                peeked[ask.tenant, ask.resource] = peek
            # Whole units left in every band: an integer number of units fits
            # exactly when it is at most that, whatever the algorithm.
            fits.append(not ask.never and all(ask.units <= band.remaining for band in peek[1]))
        refused = any(
            ask is not None and not fit and not ask.policy.shadow
            for ask, fit in zip(asks, fits, strict=True)
        )
        if not refused:
            self._check_room(asks, fits, peeked)

        decisions: list[Decision | None] = [None] * len(asks)
        # Those that do not fit first, on the buckets as they are: a denial
        # writes nothing. Then those that fit, in order: each is charged its
        # cost, after the checks before it on its bucket.
        for index, (ask, fit) in enumerate(zip(asks, fits, strict=True)):
            if ask is not None and not fit:
                if ask.never:
                    decision = peeked[ask.tenant, ask.resource][0]
                else:
                    decision = table.decide(ask.policy, ask.tenant, ask.resource, now_ns, ask.units)
                decisions[index] = _settle(ask, decision)
        for index, (ask, fit) in enumerate(zip(asks, fits, strict=True)):
            if ask is not None and fit:
                if refused:
                    decisions[index] = peeked[ask.tenant, ask.resource][0]
                else:
                    decisions[index] = table.decide(
                        ask.policy, ask.tenant, ask.resource, now_ns, ask.cost
                    )
        self._count_all(asks, decisions)
        return decisions

    def _check_room(
        self,
        asks: Sequence[Ask | None],
        fits: Sequence[bool],
        peeked: dict[tuple[str, str], tuple[Decision, list[BandQuota]]],
    ) -> None:
        """Refuse, before anything is charged, checks that may need more new buckets
        than the table has room for: a refusal after others were charged would
        leave them charged. A bucket whose bands are all full may be new."""
        maybe_new: set[tuple[str, str]] = set()
        for ask, fit in zip(asks, fits, strict=True):
            if ask is None or not fit:
                continue
            bands = peeked[ask.tenant, ask.resource][1]
            if all(band.remaining == band.band.capacity for band in bands):
                maybe_new.add((ask.tenant, ask.resource))
        if len(self.table) + len(maybe_new) > self.table.max_buckets:
            raise CapacityExhausted(
                f"the bucket table is too full ({len(self.table)} of"
                f" {self.table.max_buckets} buckets) for {len(maybe_new)} more at once"
            )

    async def decide_all_remote(
        self, checks: Sequence[Check], owner: str | None
    ) -> list[Decision | None]:
        """:meth:`decide_all` in the remote backend, in one call to it.

        No failure mode applies: when the backend fails, or its circuit is
        open, this raises :class:`~helios.errors.BackendError` (Envoy, which
        asks for these decisions, has a failure mode of its own).
        """
        asks = self._asks(checks, owner)
        wanted = [ask for ask in asks if ask is not None]
        if not wanted:
            return [None] * len(asks)
        assert self.remote is not None
        if not self.breaker.allows(trio.current_time()):
            raise BackendError("the rate-limit store is unavailable (circuit open)")
        try:
            found = iter(await self.remote.decide_all(wanted))
        except BackendError as error:
            self._backend_failed(error)
            raise
        self.breaker.success()
        decisions = [None if ask is None else _settle(ask, next(found)) for ask in asks]
        self._count_all(asks, decisions)
        return decisions

    def _asks(self, checks: Sequence[Check], owner: str | None) -> list[Ask | None]:
        """Each check validated and resolved, with its units; ``None`` where no policy matches."""
        asks: list[Ask | None] = []
        units: dict[tuple[str, str], int] = {}
        for check in checks:
            tenant = check_name(check.tenant, "tenant")
            self.keys.permit(owner, tenant)
            resource = check_name(check.resource, "resource")
            policy = self.policies.resolve(tenant, resource)
            if policy is None:
                asks.append(None)
                continue
            total = units[tenant, resource] = units.get((tenant, resource), 0) + check.cost
            previous = self._predecessors_of(policy) if self.remote is not None else ()
            asks.append(Ask(policy, tenant, resource, check.cost, total, previous))
        return asks

    def _count_all(self, asks: Sequence[Ask | None], decisions: Sequence[Decision | None]) -> None:
        """Count decisions taken together: all of them when they were charged,
        else only those that did not fit (the others were neither allowed nor
        charged)."""
        refused = any(decision is not None and not decision.allowed for decision in decisions)
        for ask, decision in zip(asks, decisions, strict=True):
            if ask is not None and decision is not None and not (refused and decision.would_allow):
                self._count(decision, ask.tenant)

    async def quota_remote(self, tenant: object, resource: object, owner: str | None) -> Quota:
        """The current figures of a bucket in the remote backend, charging nothing."""
        tenant = check_name(tenant, "tenant")
        self.keys.permit(owner, tenant)
        tenant, resource, policy = self.resolve(tenant, resource)
        assert self.remote is not None
        if self.breaker.allows(trio.current_time()):
            try:
                decision, bands = await self.remote.peek(
                    policy, tenant, resource, self._predecessors_of(policy)
                )
            except BackendError as error:
                failure = error
                self._backend_failed(failure)
            else:
                self.breaker.success()
                return Quota(tenant, resource, decision, bands)
        else:
            failure = BackendError("the rate-limit store is unavailable (circuit open)")
        if policy.failure_mode == "closed":
            raise failure
        if policy.failure_mode == "open":
            # As an "open" decision reports: the figures of a full bucket.
            now_ns = self.clock.now_ns()
            decision, bands = decide(policy, None, now_ns, 0)[0], inspect(policy, None, now_ns)
        else:
            decision, bands = self.table.peek(policy, tenant, resource, self.clock.now_ns())
        decision.mode = policy.failure_mode
        return Quota(tenant, resource, decision, bands)

    async def probe_remote(self, interval_seconds: float = 0.25) -> None:
        """While the circuit is open, ping the backend; close it once it answers."""
        assert self.remote is not None
        while True:
            await trio.sleep(interval_seconds)
            if self.breaker.state is CircuitState.CLOSED:
                continue
            try:
                with trio.fail_after(max(self.remote_timeout_seconds * 4, 0.2)):
                    await self.remote.ping()
            except (BackendError, trio.TooSlowError):
                self.breaker.failure(trio.current_time())
            else:
                self.breaker.success()

    def decide_batch(
        self, checks: Sequence[tuple[object, object, int]], owner: str | None
    ) -> list[Decision | HeliosError]:
        """Decide each check in order, each on its own; an error answers only its check.

        ``checks``: (tenant, resource, cost), as a :class:`Check` holds them.
        A batch is one request, so it is decided at one instant: every check
        sees the same clock reading, and what the checks before it spent.
        Each distinct (tenant, resource) pair is validated and resolved once,
        and each run of valid checks of one pair in a row is decided with one
        lookup of its bucket.
        """
        now_ns = self.clock.now_ns()
        # (tenant, resource) as the checks give them -> (tenant, policy, bucket key).
        resolved: dict[tuple[object, object], tuple[str, Policy, bytes]] = {}
        results: list[Decision | HeliosError] = []
        append = results.append
        # The pair of the previous check, what it resolved to (None if it did
        # not), and the costs of the run of its checks not yet decided.
        found: tuple[str, Policy, bytes] | None = None
        found_tenant: object = None
        found_resource: object = None
        run: list[int] = []
        for tenant, resource, cost in checks:
            # Two comparisons with the previous check's names are cheaper than
            # a tuple and a dict lookup; equal names find the same entry.
            if found is None or tenant != found_tenant or resource != found_resource:
                if run:
                    self._decide_run(found, run, now_ns, results)
                    run = []
                try:
                    found = self._resolved(resolved, tenant, resource, owner)
                except HeliosError as error:
                    found = None
                    append(error)
                    continue
                found_tenant, found_resource = tenant, resource
            policy = found[1]
            if cost > policy.capacity:
                if run:
                    self._decide_run(found, run, now_ns, results)
                    run = []
                try:
                    validate_cost(policy, cost)
                except HeliosError as error:
                    append(error)
                continue
            run.append(cost)
        if run:
            self._decide_run(found, run, now_ns, results)
        return results

    def _resolved(
        self,
        resolved: dict[tuple[object, object], tuple[str, Policy, bytes]],
        tenant: object,
        resource: object,
        owner: str | None,
    ) -> tuple[str, Policy, bytes]:
        """What :meth:`_resolve_key` gives for a pair, remembered in ``resolved``."""
        pair = tenant, resource
        try:
            found = resolved.get(pair)
        except TypeError:  # an unhashable name (from JSON), which validation rejects
            return self._resolve_key(tenant, resource, owner)
        if found is None:
            found = resolved[pair] = self._resolve_key(tenant, resource, owner)
        return found

    def _decide_run(
        self,
        found: tuple[str, Policy, bytes] | None,
        costs: list[int],
        now_ns: int,
        results: list[Decision | HeliosError],
    ) -> None:
        """Decide a run of checks of one pair, adding each outcome to ``results``."""
        assert found is not None
        tenant, policy, key = found
        try:
            decisions = self.table.decide_run(policy, key, now_ns, costs)
        except CapacityExhausted as error:
            results.extend([error] * len(costs))
            return
        count = self._count
        for decision in decisions:
            count(decision, tenant)
        results.extend(decisions)

    def _resolve_key(
        self, tenant: object, resource: object, owner: str | None
    ) -> tuple[str, Policy, bytes]:
        """The tenant, policy and bucket key of a pair, validated as :meth:`_validate` does."""
        tenant = check_name(tenant, "tenant")
        self.keys.permit(owner, tenant)
        tenant, resource, policy = self.resolve(tenant, resource)
        return tenant, policy, bucket_key(tenant, resource)

    def quota(self, tenant: object, resource: object, owner: str | None) -> Quota:
        """The current figures of a bucket, charging nothing."""
        tenant = check_name(tenant, "tenant")
        self.keys.permit(owner, tenant)
        tenant, resource, policy = self.resolve(tenant, resource)
        decision, bands = self.table.peek(policy, tenant, resource, self.clock.now_ns())
        return Quota(tenant, resource, decision, bands)

    async def reset_counters(self, tenant: str, resource: str | None = None) -> int:
        """Forget the counters of a tenant (one resource, or all); returns buckets dropped.

        In STRONG mode the buckets in Redis are deleted too. Raises
        :class:`~helios.errors.BackendError` if Redis cannot do it.
        """
        dropped = self.table.reset(tenant, resource)
        if self.remote is None:
            return dropped
        policies: list[Policy] = []
        if resource is not None:
            policy = self.policies.resolve(tenant, resource)
            if policy is None:
                return dropped
            # Units may still sit under the shapes the policy replaced.
            policies = [policy, *self._predecessors_of(policy)]
        return dropped + await self.remote.reset(tenant, resource, policies)

    def _count(self, decision: Decision, tenant: str) -> None:
        mode = decision.mode
        if mode != "fast":
            self._other_modes[mode] = self._other_modes.get(mode, 0) + 1
        if decision.would_allow:
            self.allowed += 1
            result = ALLOWED
        elif decision.allowed:
            self.shadow_denied += 1
            result = SHADOW_DENIED
        else:
            self.denied += 1
            result = DENIED
        # Some band has remaining < 0.2 × limit (Decision.near_limit), inline.
        if decision.other_band_near or decision.remaining * 5 < decision.band.limit:
            self.near_limit[result] += 1
        if self.tenant_counts is not None:
            self.tenant_counts.count(tenant, result)

    def ready_problems(self) -> list[str]:
        """Why the gateway cannot serve decisions yet (empty when ready)."""
        problems = []
        if not len(self.policies):
            problems.append("no policies loaded")
        if self.keys.empty and not self.keys.disabled:
            problems.append("no API keys configured (set HELIOS_ALLOWED_API_KEYS)")
        if self.remote is not None and self.breaker.state is not CircuitState.CLOSED:
            problems.append(
                "the rate-limit store (Redis) is not answering; decisions follow each"
                " policy's failure_mode"
            )
        return problems
