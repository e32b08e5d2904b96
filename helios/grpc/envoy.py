"""Envoy's rate limit service (RLS v3) mapped onto Helios decisions.

``domain`` is the tenant; each descriptor's entries, joined as
``key1=value1/key2=value2``, are the resource; ``hits_addend`` (the
descriptor's own, else the request's) is the cost, 0 meaning 1.

All or nothing: every descriptor is first peeked (nothing charged, costs of
descriptors that share a bucket added up); only if each can take its cost is
each charged, else none is decided at all and the figures reported are the
peeked ones. In FAST mode nothing awaits between the two steps, so the
answer is atomic within the process. In STRONG mode other gateways may spend
in between: a descriptor that passed its peek can then be denied after the
ones before it were charged; it is reported OVER_LIMIT and those charges
stand.

A descriptor that no policy matches answers OK without a limit, as Envoy's
reference service does for descriptors its configuration does not know; a
request whose descriptors all go unmatched therefore answers OK.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.duration_pb2 import Duration

from helios.core.decision import Decision
from helios.core.policy import Band, validate_cost
from helios.errors import InvalidRequest, NotFound
from helios.gateway.service import Check, Gateway, Quota
from helios.grpc.generated.envoy.config.core.v3.base_pb2 import HeaderValue
from helios.grpc.generated.envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import (
    RateLimitDescriptor,
)
from helios.grpc.generated.envoy.service.ratelimit.v3.rls_pb2 import (
    RateLimitRequest,
    RateLimitResponse,
)

Code = RateLimitResponse.Code
Unit = RateLimitResponse.RateLimit.Unit

# The largest cost Helios accepts anywhere.
_MAX_COST = 1_000_000_000

_UNIT_SECONDS: list[tuple[float, int]] = [
    (1, Unit.SECOND),
    (60, Unit.MINUTE),
    (3600, Unit.HOUR),
    (86_400, Unit.DAY),
    (7 * 86_400, Unit.WEEK),
    (30 * 86_400, Unit.MONTH),
    (365 * 86_400, Unit.YEAR),
]
_CALENDAR_UNITS = {"day": Unit.DAY, "week": Unit.WEEK, "month": Unit.MONTH, "year": Unit.YEAR}

_UINT32_MAX = 2**32 - 1


def band_unit(band: Band) -> int:
    """Envoy's unit for a band: exact for 1 s, 1 m, 1 h, 1 d, else the nearest (log scale)."""
    if band.calendar is not None:
        return _CALENDAR_UNITS[band.calendar]
    window = max(band.window_seconds, 1e-3)
    return min(_UNIT_SECONDS, key=lambda entry: abs(math.log(window / entry[0])))[1]


@dataclass(slots=True)
class _Item:
    """One descriptor of a request: its check, and what is known of it so far."""

    check: Check
    quota: Quota | None = None  # None: no policy matches
    decision: Decision | None = None
    over: bool = False


def _resource(descriptor: RateLimitDescriptor, index: int) -> str:
    if not descriptor.entries:
        raise InvalidRequest(f"descriptors[{index}] has no entries", field="descriptors")
    return "/".join(f"{entry.key}={entry.value}" for entry in descriptor.entries)


def _cost(request: RateLimitRequest, descriptor: RateLimitDescriptor) -> int:
    cost = descriptor.hits_addend.value if descriptor.HasField("hits_addend") else 0
    cost = cost or request.hits_addend or 1
    if cost > _MAX_COST:
        raise InvalidRequest(
            f"hits_addend must be at most {_MAX_COST}, got {cost}", field="hits_addend"
        )
    return cost


def _items(request: RateLimitRequest) -> list[_Item]:
    if not request.descriptors:
        raise InvalidRequest("at least one descriptor is required", field="descriptors")
    return [
        _Item(Check(request.domain, _resource(descriptor, index), _cost(request, descriptor)))
        for index, descriptor in enumerate(request.descriptors)
    ]


def _mark_over(items: Sequence[_Item]) -> bool:
    """Mark the descriptors that cannot take their cost now; True if any.

    Costs of descriptors that fall in the same bucket are added up. A shadow
    policy never blocks.
    """
    wanted: dict[tuple[str, str], int] = {}
    for item in items:
        if item.quota is None or item.quota.decision.policy.shadow:
            continue
        key = (item.quota.tenant, item.quota.resource)
        wanted[key] = wanted.get(key, 0) + item.check.cost
        # remaining is the whole units left, so an integer cost fits exactly
        # when it is at most remaining, in every band.
        if any(band.remaining < wanted[key] for band in item.quota.bands):
            item.over = True
    return any(item.over for item in items)


def _peek(gateway: Gateway, item: _Item, owner: str | None) -> None:
    try:
        item.quota = gateway.quota(item.check.tenant, item.check.resource, owner)
    except NotFound:
        return
    validate_cost(item.quota.decision.policy, item.check.cost)


async def _peek_remote(gateway: Gateway, item: _Item, owner: str | None) -> None:
    try:
        item.quota = await gateway.quota_remote(item.check.tenant, item.check.resource, owner)
    except NotFound:
        return
    validate_cost(item.quota.decision.policy, item.check.cost)


def should_rate_limit(
    gateway: Gateway, request: RateLimitRequest, owner: str | None
) -> RateLimitResponse:
    """Answer ShouldRateLimit in memory (FAST mode); atomic within the process."""
    items = _items(request)
    for item in items:
        _peek(gateway, item, owner)
    if not _mark_over(items):
        for item in items:
            if item.quota is not None:
                item.decision = gateway.decide(item.check, owner)
                item.over = not item.decision.allowed
    return _response(items)


async def should_rate_limit_remote(
    gateway: Gateway, request: RateLimitRequest, owner: str | None
) -> RateLimitResponse:
    """Answer ShouldRateLimit in the remote backend (STRONG mode); see the module doc."""
    items = _items(request)
    for item in items:
        await _peek_remote(gateway, item, owner)
    if not _mark_over(items):
        for item in items:
            if item.quota is not None:
                item.decision = await gateway.decide_remote(item.check, owner)
                item.over = not item.decision.allowed
    return _response(items)


def _status(item: _Item) -> RateLimitResponse.DescriptorStatus:
    code = Code.OVER_LIMIT if item.over else Code.OK
    if item.quota is None:
        return RateLimitResponse.DescriptorStatus(code=code)
    decision = item.decision or item.quota.decision
    band = decision.band
    return RateLimitResponse.DescriptorStatus(
        code=code,
        current_limit=RateLimitResponse.RateLimit(
            name=f"{decision.policy.name} {band.describe()}",
            requests_per_unit=min(band.limit, _UINT32_MAX),
            unit=band_unit(band),  # type: ignore[arg-type]  # an enum value is an int
        ),
        limit_remaining=min(decision.remaining, _UINT32_MAX),
        duration_until_reset=Duration(seconds=decision.reset_seconds),
    )


def _headers(items: Sequence[_Item]) -> list[HeaderValue]:
    """The rate-limit headers of the tightest descriptor: over its limit, or fewest left."""
    limited = [item for item in items if item.quota is not None]
    if not limited:
        return []
    tightest = min(
        limited,
        key=lambda item: (not item.over, (item.decision or _quota_decision(item)).remaining),
    )
    decision = tightest.decision or _quota_decision(tightest)
    headers = [
        HeaderValue(key="x-ratelimit-limit", value=str(decision.band.limit)),
        HeaderValue(key="x-ratelimit-remaining", value=str(decision.remaining)),
        HeaderValue(key="x-ratelimit-reset", value=str(decision.reset_time)),
    ]
    if tightest.over:
        # A descriptor over its limit is not decided (deciding could charge
        # it, if its bucket refilled meanwhile); when it was not, the time
        # until its bucket is full again bounds the wait from above.
        retry_after = decision.retry_after_seconds or max(1, decision.reset_seconds)
        headers.append(HeaderValue(key="retry-after", value=str(retry_after)))
    return headers


def _quota_decision(item: _Item) -> Decision:
    assert item.quota is not None
    return item.quota.decision


def _response(items: Sequence[_Item]) -> RateLimitResponse:
    over = any(item.over for item in items)
    return RateLimitResponse(
        overall_code=Code.OVER_LIMIT if over else Code.OK,
        statuses=[_status(item) for item in items],
        response_headers_to_add=_headers(items),
    )
