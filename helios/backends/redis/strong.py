"""The STRONG backend: every decision in Redis, one atomic Lua script each.

All bands of a policy are checked and charged by one script run
(``decide.lua``), on Redis time, so any number of gateways together never
admit more than a policy allows, whatever their own clocks say.

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

from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

from helios.backends.redis.protocol import Script
from helios.core.decision import BandQuota, Decision, combine
from helios.core.policy import Band, Policy

if TYPE_CHECKING:
    from helios.backends.redis.client import RedisLike
    from helios.backends.redis.protocol import Reply
    from helios.tracing import Tracing

DECIDE = Script(resources.files("helios.backends.redis").joinpath("decide.lua").read_text())

_ALGORITHM_CODES = {"token_bucket": "tb", "fixed_window": "fw", "sliding_window": "sw"}
_NS_PER_US = 1000
_NS_PER_S = 1_000_000_000


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
        # With tracing on, a script run under a sampled request gets a span of its own.
        self.tracing = tracing

    def keys(self, policy: Policy, tenant: str, resource: str) -> list[str]:
        tag = hash_tag(tenant, resource)
        return [band_key(self.key_prefix, tag, policy.algorithm, band) for band in policy.bands]

    async def _run(
        self,
        policy: Policy,
        tenant: str,
        resource: str,
        cost: int,
        previous: Sequence[Policy] = (),
    ) -> tuple[list[tuple[bool, int, int, int]], int]:
        keys = self.keys(policy, tenant, resource)
        args: list[Any] = [policy.algorithm, cost, len(policy.bands), *_band_args(policy)]
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
        if self.tracing is None:
            reply = await self.redis.evalsha(DECIDE, tuple(keys), tuple(args))
        else:
            reply = await self._traced_evalsha(self.tracing, keys, args)
        now_ns = int(reply[0]) * _NS_PER_S + int(reply[1]) * _NS_PER_US
        results = [
            (
                int(reply[index]) == 1,
                int(reply[index + 1]),
                int(reply[index + 2]) * _NS_PER_US,
                int(reply[index + 3]) * _NS_PER_US,
            )
            for index in range(2, len(reply), 4)
        ]
        return results, now_ns

    async def _traced_evalsha(self, tracing: Tracing, keys: list[str], args: list[Any]) -> Reply:
        # The keys name tenants and resources; the span says how many there are.
        attributes: dict[str, str | int] = {
            "db.system": "redis",
            "db.system.name": "redis",
            "db.operation.name": "EVALSHA",
            "db.redis.keys": len(keys),
        }
        with tracing.client_span("redis.evalsha", attributes):
            return await self.redis.evalsha(DECIDE, tuple(keys), tuple(args))

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
        results, now_ns = await self._run(policy, tenant, resource, cost, previous)
        decision = combine(policy, results, now_ns)
        decision.mode = "strong"
        return decision

    async def peek(
        self, policy: Policy, tenant: str, resource: str, previous: Sequence[Policy] = ()
    ) -> tuple[Decision, list[BandQuota]]:
        """The bucket's figures in Redis, charging nothing."""
        results, now_ns = await self._run(policy, tenant, resource, 0, previous)
        decision = combine(policy, results, now_ns)
        decision.mode = "strong"
        bands = [
            BandQuota(band, max(0, remaining), -(-reset_ns // _NS_PER_S))
            for band, (_, remaining, _, reset_ns) in zip(policy.bands, results, strict=True)
        ]
        return decision, bands

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
