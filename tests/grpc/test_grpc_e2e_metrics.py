"""The real ``helios`` process counts and times its gRPC calls in /metrics.

``helios_requests_total`` has ``transport="grpc"``, the full method name as
``route`` (``unknown`` for a method not served) and the status code name as
``code``; ``helios_decision_duration_seconds{transport="grpc"}`` times each
call whose request message was read.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import grpc
import pytest
import trio
from grpc_e2e_support import (  # noqa: F401 - fixtures, found by name
    KEY,
    GrpcHelios,
    GrpcHeliosFactory,
    grpc_helios_fixture,
)

from helios.grpc.generated.envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import (
    RateLimitDescriptor,
)
from helios.grpc.generated.envoy.service.ratelimit.v3.rls_pb2 import RateLimitRequest
from helios.grpc.generated.helios.v1 import ratelimit_pb2 as pb

pytestmark = pytest.mark.slow

POLICIES = """\
[[policies]]
tenant = "acme"
resource = "r"
algorithm = "fixed_window"
limit = 1000
window = "1h"
"""

SERVICE = "/helios.v1.RateLimitService"
ALLOW = f"{SERVICE}/Allow"
RLS = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"


def _calls(target: str, stubs: dict[str, ModuleType]) -> list[grpc.StatusCode]:
    """Calls of every method, some failing; the status codes of the failures."""
    check = pb.AllowRequest(tenant="acme", resource="r")
    failures = []
    with grpc.insecure_channel(target) as channel:
        helios = stubs["helios"].RateLimitServiceStub(channel)
        envoy = stubs["envoy"].RateLimitServiceStub(channel)
        for _ in range(3):
            helios.Allow(check, metadata=KEY, timeout=5)
        helios.AllowBatch(pb.AllowBatchRequest(checks=[check] * 4), metadata=KEY, timeout=5)
        helios.GetQuota(pb.GetQuotaRequest(tenant="acme", resource="r"), metadata=KEY, timeout=5)
        descriptor = RateLimitDescriptor(entries=[RateLimitDescriptor.Entry(key="k", value="v")])
        envoy.ShouldRateLimit(
            RateLimitRequest(domain="acme", descriptors=[descriptor]), metadata=KEY, timeout=5
        )
        unknown = channel.unary_unary(f"{SERVICE}/Nope")
        oversized = pb.AllowRequest(tenant="a" * (5 * 1024 * 1024))
        for call in (
            lambda: helios.Allow(check, timeout=5),
            lambda: helios.Allow(
                pb.AllowRequest(tenant="acme", resource="x"), metadata=KEY, timeout=5
            ),
            lambda: unknown(b"", timeout=5),
            lambda: helios.Allow(oversized, metadata=KEY, timeout=5),
        ):
            try:
                call()
            except grpc.RpcError as error:
                failures.append(error.code())
    return failures


async def test_grpc_calls_are_counted_by_method_and_status(
    grpc_helios: GrpcHeliosFactory, grpcio_stubs: Any
) -> None:
    process: GrpcHelios = grpc_helios(POLICIES)
    assert process.metric("helios_requests_total", transport="grpc") == 0
    assert process.metric("helios_decision_duration_seconds_count", transport="grpc") == 0

    failures = await trio.to_thread.run_sync(_calls, process.target, grpcio_stubs)
    assert failures == [
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ]

    def calls(route: str, code: str) -> float:
        return process.metric("helios_requests_total", transport="grpc", route=route, code=code)

    assert calls(ALLOW, "OK") == 3
    assert calls(f"{SERVICE}/AllowBatch", "OK") == 1
    assert calls(f"{SERVICE}/GetQuota", "OK") == 1
    assert calls(RLS, "OK") == 1
    assert calls(ALLOW, "UNAUTHENTICATED") == 1
    assert calls(ALLOW, "NOT_FOUND") == 1
    # A method not served: one route for all of them, whatever the name.
    assert calls("unknown", "UNIMPLEMENTED") == 1
    assert calls(ALLOW, "RESOURCE_EXHAUSTED") == 1
    assert process.metric("helios_requests_total", transport="grpc") == 10

    # Timed: every call whose request message was read (all but the last two).
    count = process.metric("helios_decision_duration_seconds_count", transport="grpc")
    assert count == 8
    assert (
        process.metric("helios_decision_duration_seconds_bucket", transport="grpc", le="+Inf") == 8
    )
    assert 0 < process.metric("helios_decision_duration_seconds_sum", transport="grpc") < 8
    # Decisions are counted over every transport: 3 + 4 allowed checks, and the
    # descriptor that no policy matches decides nothing.
    assert process.metric("helios_rate_limits_total", result="allowed") == 7
    # HTTP's figures stay apart.
    assert process.metric("helios_requests_total", transport="http", route="/allow") == 0
