"""Envoy's rate limit service (RLS v3) mapped onto Helios decisions.

``domain`` is the tenant; each descriptor's entries, joined as
``key1=value1/key2=value2``, are the resource (see :func:`descriptor_resource`);
``hits_addend`` (the descriptor's own, else the request's) is the cost, 0
meaning 1.

The descriptors of one request are decided together, all or nothing
(:meth:`~helios.gateway.service.Gateway.decide_all`): only if every descriptor
fits is any charged. In FAST mode that happens at one instant in memory; in
STRONG mode in one Redis script run (see helios.backends.redis.strong for a
Redis Cluster). A backend failure is an error (UNAVAILABLE), never a
decision, so that Envoy's own ``failure_mode_deny`` applies.

A descriptor that no policy matches answers OK without a limit, as Envoy's
reference service does for descriptors its configuration does not know; a
request whose descriptors all go unmatched therefore answers OK.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from google.protobuf.duration_pb2 import Duration

from helios.core.decision import Decision
from helios.core.names import MAX_COST, MAX_NAME_LENGTH
from helios.core.policy import Band
from helios.errors import InvalidRequest
from helios.gateway.headers import structured_string, window_parameter
from helios.gateway.service import Check, Gateway
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

# Percent-encoded in descriptor keys and values: "%" (the escape itself), "/"
# (between entries), "*" (a policy's resource pattern ends in one, so a value
# may end in "*" and still be matched exactly) and control characters (which
# no resource may hold). Keys also escape "=" (between key and value).
_VALUE_ESCAPES = {ord(c): f"%{ord(c):02X}" for c in "%/*"} | {
    c: f"%{c:02X}" for c in (*range(0x20), 0x7F)
}
_KEY_ESCAPES = _VALUE_ESCAPES | {ord("="): "%3D"}


def band_unit(band: Band) -> int:
    """Envoy's unit for a band: exact for 1 s, 1 m, 1 h, 1 d, else the nearest (log scale)."""
    if band.calendar is not None:
        return _CALENDAR_UNITS[band.calendar]
    window = max(band.window_seconds, 1e-3)
    return min(_UNIT_SECONDS, key=lambda entry: abs(math.log(window / entry[0])))[1]


def descriptor_resource(entries: Iterable[tuple[str, str]]) -> str:
    """The resource of a descriptor's (key, value) entries: ``key1=value1/key2=value2``.

    Collision-free: ``%``, ``/``, ``*`` and control characters are
    percent-encoded in keys and values, and ``=`` in keys, so ``/`` only
    separates entries and the first ``=`` of an entry ends its key. The
    entries ``path=/z``, ``user=bob`` give ``path=%2Fz/user=bob``, the one
    entry ``path=/z/user=bob`` gives ``path=%2Fz%2Fuser=bob``.
    """
    return "/".join(
        f"{key.translate(_KEY_ESCAPES)}={value.translate(_VALUE_ESCAPES)}" for key, value in entries
    )


def _resource(descriptor: RateLimitDescriptor, index: int) -> str:
    if not descriptor.entries:
        raise InvalidRequest(f"descriptors[{index}] has no entries", field="descriptors")
    resource = descriptor_resource((entry.key, entry.value) for entry in descriptor.entries)
    if len(resource) > MAX_NAME_LENGTH:
        raise InvalidRequest(
            f"descriptors[{index}] makes a resource of {len(resource)} characters;"
            f" at most {MAX_NAME_LENGTH} are allowed",
            field="descriptors",
        )
    return resource


def _cost(request: RateLimitRequest, descriptor: RateLimitDescriptor) -> int:
    cost = descriptor.hits_addend.value if descriptor.HasField("hits_addend") else 0
    cost = cost or request.hits_addend or 1
    if cost > MAX_COST:
        raise InvalidRequest(
            f"hits_addend must be at most {MAX_COST}, got {cost}", field="hits_addend"
        )
    return cost


def checks(request: RateLimitRequest) -> list[Check]:
    """The check of each descriptor, in order."""
    if not request.domain:
        raise InvalidRequest("domain (the tenant) is required", field="domain")
    if not request.descriptors:
        raise InvalidRequest("at least one descriptor is required", field="descriptors")
    return [
        Check(request.domain, _resource(descriptor, index), _cost(request, descriptor))
        for index, descriptor in enumerate(request.descriptors)
    ]


def should_rate_limit(
    gateway: Gateway, request: RateLimitRequest, owner: str | None
) -> RateLimitResponse:
    """Answer ShouldRateLimit in memory (FAST mode)."""
    return response(gateway.decide_all(checks(request), owner))


async def should_rate_limit_remote(
    gateway: Gateway, request: RateLimitRequest, owner: str | None
) -> RateLimitResponse:
    """Answer ShouldRateLimit in the remote backend (STRONG mode)."""
    return response(await gateway.decide_all_remote(checks(request), owner))


def response(decisions: Sequence[Decision | None]) -> RateLimitResponse:
    """The answer to a request whose descriptors were decided as ``decisions``."""
    over = any(decision is not None and not decision.allowed for decision in decisions)
    return RateLimitResponse(
        overall_code=Code.OVER_LIMIT if over else Code.OK,
        statuses=[_status(decision) for decision in decisions],
        response_headers_to_add=_headers(decisions),
    )


def _status(decision: Decision | None) -> RateLimitResponse.DescriptorStatus:
    if decision is None:
        return RateLimitResponse.DescriptorStatus(code=Code.OK)
    band = decision.band
    return RateLimitResponse.DescriptorStatus(
        code=Code.OK if decision.allowed else Code.OVER_LIMIT,
        current_limit=RateLimitResponse.RateLimit(
            name=f"{decision.policy.name} {band.describe()}",
            requests_per_unit=min(band.limit, _UINT32_MAX),
            unit=band_unit(band),  # type: ignore[arg-type]  # an enum value is an int
        ),
        limit_remaining=min(decision.remaining, _UINT32_MAX),
        duration_until_reset=Duration(seconds=decision.reset_seconds),
    )


def _headers(decisions: Sequence[Decision | None]) -> list[HeaderValue]:
    """The rate-limit headers of the tightest descriptor, as the HTTP API writes them.

    The tightest is the one over its limit that must wait longest (the
    request cannot succeed before), else the one with the fewest units left.
    """
    limited = [decision for decision in decisions if decision is not None]
    if not limited:
        return []
    over = [decision for decision in limited if not decision.allowed]
    if over:
        tightest = max(over, key=lambda decision: decision.retry_after_ms)
    else:
        tightest = min(limited, key=lambda decision: decision.remaining)
    band = tightest.band
    name = structured_string(tightest.policy.name)
    t = tightest.reset_seconds if tightest.allowed else tightest.retry_after_seconds
    headers = [
        HeaderValue(key="x-ratelimit-limit", value=str(band.limit)),
        HeaderValue(key="x-ratelimit-remaining", value=str(tightest.remaining)),
        HeaderValue(key="x-ratelimit-reset", value=str(tightest.reset_time)),
        HeaderValue(
            key="ratelimit-policy",
            value=f"{name};q={band.limit};w={window_parameter(band)}",
        ),
        HeaderValue(key="ratelimit", value=f"{name};r={tightest.remaining};t={t}"),
    ]
    if not tightest.allowed:
        headers.append(HeaderValue(key="retry-after", value=str(tightest.retry_after_seconds)))
    return headers
