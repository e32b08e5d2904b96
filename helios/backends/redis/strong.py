"""The STRONG backend: every decision in Redis, one atomic Lua script each.

All bands of a policy are checked and charged by one script run
(``decide.lua``), on Redis time, so any number of gateways together never
admit more than a policy allows, whatever their own clocks say. Several
checks that must be charged together or not at all (Envoy's descriptors of
one request) are one script run too, on one Redis server; in a Redis Cluster
only the checks of one hash slot share a run, and a refusal refunds the
others (see :meth:`StrongBackend._decide_in_slots`).

Keys: ``<prefix>:{<bucket>}:<algorithm>:<window>``. The braces hold the
bucket's collision-free name (tenant length, tenant, resource), with ``%``
and ``}`` percent-escaped so that no name can end the hash tag early: every
band of one bucket lands in one Redis Cluster slot. A band's key depends on
its algorithm and window only, so a policy change that keeps both keeps the
spent units (a token bucket stores units spent, not units left, so a new limit
applies to the same spending). A change of algorithm or window gives a band a
new key; the gateway then names the policies it recently replaced, and the
script seeds the new key from the units spent under the most recent one whose
key still exists, so no change refills a bucket.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import trio

from helios.backends.redis.client import ClientOptions
from helios.backends.redis.cluster import RedisCluster
from helios.backends.redis.protocol import Script, key_slot
from helios.core.decision import BandQuota, Decision, combine
from helios.core.policy import Band, Policy
from helios.errors import BackendError

if TYPE_CHECKING:
    from helios.backends.redis.client import RedisLike
    from helios.backends.redis.protocol import Reply
    from helios.gateway.service import Ask
    from helios.tracing import Tracing

log = logging.getLogger("helios.redis")

DECIDE = Script(resources.files("helios.backends.redis").joinpath("decide.lua").read_text())

_ALGORITHM_CODES = {"token_bucket": "tb", "fixed_window": "fw", "sliding_window": "sw"}
_NS_PER_US = 1000
_NS_PER_S = 1_000_000_000
_US_PER_S = 1_000_000

# A check's flags in decide.lua: a shadow check never stops the others; a
# check that can never fit is only read.
_SHADOW = 1
_NEVER = 2


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one run of ``decide.lua`` answered."""

    now_us: int
    # A check that is not shadow did not fit, so nothing was charged.
    refused: bool
    # Per check, per band: (allowed, remaining, wait_ns, reset_ns).
    results: list[list[tuple[bool, int, int, int]]]

    def decision(self, policy: Policy, place: int) -> Decision:
        decision = combine(policy, self.results[place], self.now_us * _NS_PER_US)
        decision.mode = "strong"
        return decision

    def fits(self, ask: Ask, place: int) -> bool:
        """Whether the check at ``place`` fit its bucket (and was charged, unless refused)."""
        return not ask.never and all(band[0] for band in self.results[place])


# Stands in for the outcome of a run that failed; never read.
_NO_OUTCOME = _Outcome(0, True, [])


def _left_ms(deadline: float) -> float:
    """Milliseconds left until ``deadline`` (trio time), at least one."""
    return max(1.0, (deadline - trio.current_time()) * 1000)


def hash_tag(tenant: str, resource: str) -> str:
    """The bucket's name as it stands inside a Redis hash tag."""
    name = f"{len(tenant)}:{tenant}{resource}"
    return name.replace("%", "%25").replace("}", "%7D")


def _glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis MATCH pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def band_key(prefix: str, tag: str, algorithm: str, band: Band) -> str:
    window = band.calendar or str(band.window_ns // _NS_PER_US)
    return f"{prefix}:{{{tag}}}:{_ALGORITHM_CODES[algorithm]}:{window}"


def _band_args(policy: Policy) -> list[Any]:
    args: list[Any] = []
    for band in policy.bands:
        args.extend((band.limit, band.window_ns // _NS_PER_US, band.burst, band.calendar or ""))
    return args


def _inheritance(policy: Policy, previous: Policy) -> list[int] | None:
    """For each band, the 1-based previous band it inherits spent units from, or 0.

    A band whose key is unchanged (same algorithm and window) keeps its own
    state and inherits nothing; otherwise it inherits from the previous band
    with the same window, or else the nearest one (as FAST mode does).
    ``None`` when no band inherits anything.
    """
    inherit = []
    for band in policy.bands:
        same_key = policy.algorithm == previous.algorithm and any(
            old.window_ns == band.window_ns and old.calendar == band.calendar
            for old in previous.bands
        )
        if same_key:
            inherit.append(0)
            continue
        nearest = min(
            range(len(previous.bands)),
            key=lambda i: (
                previous.bands[i].calendar != band.calendar,
                abs(previous.bands[i].window_ns - band.window_ns),
            ),
        )
        inherit.append(nearest + 1)
    return inherit if any(inherit) else None


class StrongBackend:
    """Decides in Redis; see the module docstring."""

    def __init__(
        self, redis: RedisLike, *, key_prefix: str = "helios", tracing: Tracing | None = None
    ) -> None:
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("the Redis key prefix may not contain braces")
        self.redis = redis
        self.key_prefix = key_prefix
        # The client's timeout: a decision across the slots of a cluster
        # makes several calls, all within one.
        options = getattr(redis, "options", None)
        timeout_ms = options.timeout_ms if isinstance(options, ClientOptions) else 50.0
        self._timeout_s = timeout_ms / 1000
        # With tracing on, a script run under a sampled request gets a span of its own.
        self.tracing = tracing

    def keys(self, policy: Policy, tenant: str, resource: str) -> list[str]:
        tag = hash_tag(tenant, resource)
        return [band_key(self.key_prefix, tag, policy.algorithm, band) for band in policy.bands]

    def _check(
        self,
        policy: Policy,
        tenant: str,
        resource: str,
        units: int,
        flags: int = 0,
        previous: Sequence[Policy] = (),
    ) -> tuple[list[str], list[Any]]:
        """One check's keys and values, as ``decide.lua`` takes them."""
        keys = self.keys(policy, tenant, resource)
        args: list[Any] = [policy.algorithm, units, flags, len(policy.bands), *_band_args(policy)]
        blocks: list[Any] = []
        count = 0
        for old in previous:
            inherit = _inheritance(policy, old)
            if inherit is None:
                continue
            count += 1
            keys.extend(self.keys(old, tenant, resource))
            blocks.extend((old.algorithm, len(old.bands), *_band_args(old), *inherit))
        args.extend((count, *blocks))
        return keys, args

    async def _run(
        self,
        checks: Sequence[tuple[list[str], list[Any]]],
        *,
        refund_at_us: int = 0,
        timeout_ms: float | None = None,
    ) -> _Outcome:
        """One run of ``decide.lua`` on ``checks`` (see :meth:`_check`)."""
        keys: list[Any] = []
        args: list[Any] = [refund_at_us, len(checks)]
        for check_keys, check_args in checks:
            keys.extend(check_keys)
            args.extend(check_args)
        if self.tracing is None:
            reply = await self.redis.evalsha(DECIDE, keys, args, timeout_ms=timeout_ms)
        else:
            reply = await self._traced_evalsha(self.tracing, keys, args, timeout_ms)
        now_us = int(reply[0]) * _US_PER_S + int(reply[1])
        results = []
        index = 3
        for _, check_args in checks:
            bands = []
            for _ in range(int(check_args[3])):
                allowed, remaining, wait_us, reset_us = reply[index : index + 4]
                bands.append(
                    (
                        int(allowed) == 1,
                        int(remaining),
                        int(wait_us) * _NS_PER_US,
                        int(reset_us) * _NS_PER_US,
                    )
                )
                index += 4
            results.append(bands)
        return _Outcome(now_us, int(reply[2]) == 1, results)

    async def _traced_evalsha(
        self, tracing: Tracing, keys: list[Any], args: list[Any], timeout_ms: float | None
    ) -> Reply:
        # The keys name tenants and resources; the span says how many there are.
        attributes: dict[str, str | int] = {
            "db.system": "redis",
            "db.system.name": "redis",
            "db.operation.name": "EVALSHA",
            "db.redis.keys": len(keys),
        }
        with tracing.client_span("redis.evalsha", attributes):
            return await self.redis.evalsha(DECIDE, keys, args, timeout_ms=timeout_ms)

    async def decide(
        self,
        policy: Policy,
        tenant: str,
        resource: str,
        cost: int,
        previous: Sequence[Policy] = (),
    ) -> Decision:
        """Check and charge every band of the bucket atomically in Redis.

        ``previous``: the policies this one recently replaced, most recent
        first, whose keys may still hold units spent before the change.
        """
        outcome = await self._run([self._check(policy, tenant, resource, cost, 0, previous)])
        return outcome.decision(policy, 0)

    async def peek(
        self, policy: Policy, tenant: str, resource: str, previous: Sequence[Policy] = ()
    ) -> tuple[Decision, list[BandQuota]]:
        """The bucket's figures in Redis, charging nothing."""
        outcome = await self._run([self._check(policy, tenant, resource, 0, 0, previous)])
        bands = [
            BandQuota(band, max(0, remaining), -(-reset_ns // _NS_PER_S))
            for band, (_, remaining, _, reset_ns) in zip(
                policy.bands, outcome.results[0], strict=True
            )
        ]
        return outcome.decision(policy, 0), bands

    async def decide_all(self, asks: Sequence[Ask]) -> list[Decision]:
        """Decide checks together, all or nothing (see ``Gateway.decide_all``).

        For each ask: its denial when it does not fit; else its decision when
        the asks were charged, or its bucket's figures when they were not.
        On one Redis server (or a sentinel's master) this is one run of the
        script, exact and atomic. In a cluster, asks whose buckets live in
        different hash slots cannot share a script run: see
        :meth:`_decide_in_slots`.
        """
        checks = [
            self._check(
                ask.policy,
                ask.tenant,
                ask.resource,
                ask.units,
                (_SHADOW if ask.policy.shadow else 0) | (_NEVER if ask.never else 0),
                ask.previous,
            )
            for ask in asks
        ]
        slots: dict[int, list[int]] = {}
        if isinstance(self.redis, RedisCluster):
            for index, (keys, _) in enumerate(checks):
                slots.setdefault(key_slot(keys[0]), []).append(index)
        if len(slots) <= 1:
            outcome = await self._run(checks)
            return [outcome.decision(ask.policy, index) for index, ask in enumerate(asks)]
        return await self._decide_in_slots(asks, checks, list(slots.values()))

    async def _decide_in_slots(
        self,
        asks: Sequence[Ask],
        checks: list[tuple[list[str], list[Any]]],
        groups: list[list[int]],
    ) -> list[Decision]:
        """:meth:`decide_all` across hash slots: charge each slot, refund on a refusal.

        The asks of each slot are decided by one script run, all runs at
        once. If a run refuses its asks, or fails, the runs that charged
        theirs give the units back (see ``refund`` in ``decide.lua``). In
        between, another request may be refused for units that are then
        refunded, but none is ever admitted beyond a limit. All of it happens
        within one Redis timeout; a refund that fails or runs out of time
        leaves its units charged (the buckets admit less, never more).
        """
        deadline = trio.current_time() + self._timeout_s
        outcomes: list[_Outcome | None] = [None] * len(groups)
        failures: list[BackendError] = []

        async def decide(group: int) -> None:
            try:
                outcomes[group] = await self._run(
                    [checks[index] for index in groups[group]], timeout_ms=_left_ms(deadline)
                )
            except BackendError as error:
                failures.append(error)

        async with trio.open_nursery() as nursery:
            for group in range(len(groups)):
                nursery.start_soon(decide, group)

        # Per ask: the outcome, and the place in it, that its figures come from.
        sources: list[tuple[_Outcome, int]] = [(_NO_OUTCOME, 0)] * len(asks)
        for group, indices in enumerate(groups):
            outcome = outcomes[group]
            if outcome is not None:
                for place, index in enumerate(indices):
                    sources[index] = outcome, place
        if failures or any(outcome is not None and outcome.refused for outcome in outcomes):
            await self._refund_slots(asks, checks, groups, outcomes, sources, deadline)
        if failures:
            raise failures[0]
        return [
            sources[index][0].decision(ask.policy, sources[index][1])
            for index, ask in enumerate(asks)
        ]

    async def _refund_slots(
        self,
        asks: Sequence[Ask],
        checks: list[tuple[list[str], list[Any]]],
        groups: list[list[int]],
        outcomes: list[_Outcome | None],
        sources: list[tuple[_Outcome, int]],
        deadline: float,
    ) -> None:
        """Give back the units of the slots that charged theirs; their asks that
        fit then report their buckets as the refund left them."""

        async def refund(group: int, outcome: _Outcome) -> None:
            indices = groups[group]
            fit = [outcome.fits(asks[index], place) for place, index in enumerate(indices)]
            given: list[tuple[list[str], list[Any]]] = []
            for index, fits in zip(indices, fit, strict=True):
                keys, args = checks[index]
                given.append((keys, [args[0], asks[index].units if fits else 0, *args[2:]]))
            try:
                refunded = await self._run(
                    given, refund_at_us=outcome.now_us, timeout_ms=_left_ms(deadline)
                )
            except BackendError as error:
                log.warning("could not refund a refused decision's units: %s", error.message)
                return
            for place, (index, fits) in enumerate(zip(indices, fit, strict=True)):
                if fits:
                    sources[index] = refunded, place

        async with trio.open_nursery() as nursery:
            for group, outcome in enumerate(outcomes):
                if outcome is not None and not outcome.refused:
                    nursery.start_soon(refund, group, outcome)

    async def ping(self) -> None:
        await self.redis.ping()

    async def reset(self, tenant: str, resource: str | None, policies: Sequence[Policy]) -> int:
        """Delete a tenant's buckets; returns how many keys were deleted.

        One resource: the keys of its bucket under each of ``policies`` (they
        share one hash tag, so one command deletes them, cluster or not).
        Every resource: a SCAN of every master for the tenant's hash tags.
        """
        if resource is not None:
            keys = sorted(
                {key for policy in policies for key in self.keys(policy, tenant, resource)}
            )
            if not keys:
                return 0
            return int(await self.redis.execute("UNLINK", *keys))
        # Inside the braces a tag starts with the tenant's length and name.
        pattern = f"{_glob_escape(self.key_prefix)}:{{{_glob_escape(hash_tag(tenant, ''))}*"
        deleted = 0
        for node in self.redis.masters():
            cursor = b"0"
            while True:
                reply = await node.execute("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
                cursor, found = reply[0], reply[1]
                for key in found:
                    deleted += int(await self.redis.execute("UNLINK", key))
                if cursor in (b"0", "0", 0):
                    break
        return deleted
