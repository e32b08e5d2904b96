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
applies to the same spending).
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from helios.backends.redis.protocol import Script
from helios.core.decision import BandQuota, Decision, combine
from helios.core.policy import Band, Policy

if TYPE_CHECKING:
    from helios.backends.redis.client import RedisLike

DECIDE = Script(resources.files("helios.backends.redis").joinpath("decide.lua").read_text())

_ALGORITHM_CODES = {"token_bucket": "tb", "fixed_window": "fw", "sliding_window": "sw"}
_NS_PER_US = 1000
_NS_PER_S = 1_000_000_000


def hash_tag(tenant: str, resource: str) -> str:
    """The bucket's name as it stands inside a Redis hash tag."""
    name = f"{len(tenant)}:{tenant}{resource}"
    return name.replace("%", "%25").replace("}", "%7D")


def band_key(prefix: str, tag: str, algorithm: str, band: Band) -> str:
    window = band.calendar or str(band.window_ns // _NS_PER_US)
    return f"{prefix}:{{{tag}}}:{_ALGORITHM_CODES[algorithm]}:{window}"


class StrongBackend:
    """Decides in Redis; see the module docstring."""

    def __init__(self, redis: RedisLike, *, key_prefix: str = "helios") -> None:
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("the Redis key prefix may not contain braces")
        self.redis = redis
        self.key_prefix = key_prefix

    def keys(self, policy: Policy, tenant: str, resource: str) -> list[str]:
        tag = hash_tag(tenant, resource)
        return [band_key(self.key_prefix, tag, policy.algorithm, band) for band in policy.bands]

    async def _run(
        self, policy: Policy, tenant: str, resource: str, cost: int
    ) -> tuple[list[tuple[bool, int, int, int]], int]:
        args: list[Any] = [policy.algorithm, cost]
        for band in policy.bands:
            args.extend((band.limit, band.window_ns // _NS_PER_US, band.burst, band.calendar or ""))
        keys = tuple(self.keys(policy, tenant, resource))
        reply = await self.redis.evalsha(DECIDE, keys, tuple(args))
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

    async def decide(self, policy: Policy, tenant: str, resource: str, cost: int) -> Decision:
        """Check and charge every band of the bucket atomically in Redis."""
        results, now_ns = await self._run(policy, tenant, resource, cost)
        decision = combine(policy, results, now_ns)
        decision.mode = "strong"
        return decision

    async def peek(
        self, policy: Policy, tenant: str, resource: str
    ) -> tuple[Decision, list[BandQuota]]:
        """The bucket's figures in Redis, charging nothing."""
        results, now_ns = await self._run(policy, tenant, resource, 0)
        decision = combine(policy, results, now_ns)
        decision.mode = "strong"
        bands = [
            BandQuota(band, max(0, remaining), -(-reset_ns // _NS_PER_S))
            for band, (_, remaining, _, reset_ns) in zip(policy.bands, results, strict=True)
        ]
        return decision, bands

    async def ping(self) -> None:
        await self.redis.ping()
