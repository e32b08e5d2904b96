"""The gateway's gRPC APIs, served in-process, driven by purerpc and grpcio clients."""

from __future__ import annotations

import socket
from types import ModuleType
from typing import Any

import grpc
import pytest
import trio
from purerpc.grpclib.exceptions import RpcFailedError
from purerpc.grpclib.status import StatusCode

from helios.grpc.generated.envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import (
    RateLimitDescriptor,
)
from helios.grpc.generated.envoy.service.ratelimit.v3 import rls_grpc
from helios.grpc.generated.envoy.service.ratelimit.v3.rls_pb2 import (
    RateLimitRequest,
    RateLimitResponse,
)
from helios.grpc.generated.helios.v1 import ratelimit_grpc
from helios.grpc.generated.helios.v1 import ratelimit_pb2 as pb
from tests.unit.support import API_KEY

pytestmark = [
    # purerpc never closes the per-stream anyio channels it opens.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

KEY = (("x-api-key", API_KEY),)
OK = RateLimitResponse.Code.OK
OVER = RateLimitResponse.Code.OVER_LIMIT


def descriptor(*entries: tuple[str, str], hits: int | None = None) -> RateLimitDescriptor:
    d = RateLimitDescriptor(entries=[RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries])
    if hits is not None:
        d.hits_addend.value = hits
    return d


async def _code(call: Any) -> StatusCode:
    with pytest.raises(RpcFailedError) as info:
        await call
    return info.value.status.status_code


# purerpc client


async def test_allow_then_denied(purerpc_channel: Any) -> None:
    stub = ratelimit_grpc.RateLimitServiceStub(purerpc_channel)
    request = pb.AllowRequest(tenant="acme", resource="demo")
    remaining = [(await stub.Allow(request, metadata=KEY)).remaining for _ in range(3)]
    assert remaining == [2, 1, 0]
    denied = await stub.Allow(request, metadata=KEY)
    assert not denied.allowed
    assert denied.policy == "acme/demo"
    assert denied.limit == 3
    assert denied.retry_after_seconds >= 1


async def test_bearer_key_and_batch(purerpc_channel: Any) -> None:
    stub = ratelimit_grpc.RateLimitServiceStub(purerpc_channel)
    batch = pb.AllowBatchRequest(
        checks=[
            pb.AllowRequest(tenant="acme", resource="demo", cost=2),
            pb.AllowRequest(tenant="acme", resource="nothing"),
            pb.AllowRequest(tenant="acme", resource="demo", cost=2),
        ]
    )
    reply = await stub.AllowBatch(batch, metadata=(("authorization", f"Bearer {API_KEY}"),))
    first, missing, third = reply.results
    assert first.allowed and first.remaining == 1 and not first.HasField("error")
    assert missing.error.code == "NOT_FOUND"
    assert missing.error.field == "resource"
    assert not missing.tenant and not missing.allowed
    assert not third.allowed and not third.HasField("error")


async def test_quota_charges_nothing(purerpc_channel: Any) -> None:
    stub = ratelimit_grpc.RateLimitServiceStub(purerpc_channel)
    await stub.Allow(pb.AllowRequest(tenant="acme", resource="demo"), metadata=KEY)
    for _ in range(2):
        quota = await stub.GetQuota(
            pb.GetQuotaRequest(tenant="acme", resource="demo"), metadata=KEY
        )
        assert quota.remaining == 2
    assert quota.algorithm == "fixed_window"
    assert [(b.limit, b.window) for b in quota.bands] == [(3, "1m")]


async def test_error_codes(purerpc_channel: Any) -> None:
    stub = ratelimit_grpc.RateLimitServiceStub(purerpc_channel)
    good = pb.AllowRequest(tenant="acme", resource="demo")
    assert await _code(stub.Allow(good)) == StatusCode.UNAUTHENTICATED
    assert await _code(stub.Allow(good, metadata=(("x-api-key", "wrong"),))) == (
        StatusCode.UNAUTHENTICATED
    )
    assert await _code(stub.Allow(pb.AllowRequest(resource="demo"), metadata=KEY)) == (
        StatusCode.INVALID_ARGUMENT
    )
    too_much = pb.AllowRequest(tenant="acme", resource="demo", cost=10**10)
    assert await _code(stub.Allow(too_much, metadata=KEY)) == StatusCode.INVALID_ARGUMENT
    over_capacity = pb.AllowRequest(tenant="acme", resource="demo", cost=4)
    assert await _code(stub.Allow(over_capacity, metadata=KEY)) == StatusCode.INVALID_ARGUMENT
    missing = pb.AllowRequest(tenant="acme", resource="nothing")
    assert await _code(stub.Allow(missing, metadata=KEY)) == StatusCode.NOT_FOUND
    # The server still answers.
    assert (await stub.Allow(good, metadata=KEY)).allowed


# Envoy RLS


async def test_rls_one_over_charges_none(purerpc_channel: Any) -> None:
    stub = rls_grpc.RateLimitServiceStub(purerpc_channel)
    both = RateLimitRequest(
        domain="acme",
        descriptors=[descriptor(("remote_address", "10.0.0.1")), descriptor(("path", "/a"))],
    )
    first = await stub.ShouldRateLimit(both, metadata=KEY)
    assert first.overall_code == OK
    assert [s.limit_remaining for s in first.statuses] == [9, 0]
    second = await stub.ShouldRateLimit(both, metadata=KEY)
    assert second.overall_code == OVER
    assert [s.code for s in second.statuses] == [OK, OVER]
    # The address was not charged by the refused request.
    assert second.statuses[0].limit_remaining == 9
    assert second.statuses[0].current_limit.requests_per_unit == 10
    assert second.statuses[0].current_limit.unit == RateLimitResponse.RateLimit.Unit.MINUTE
    assert 0 < second.statuses[1].duration_until_reset.seconds <= 60
    headers = {h.key: h.value for h in second.response_headers_to_add}
    assert headers["x-ratelimit-remaining"] == "0"
    assert "retry-after" in headers


async def test_rls_hits_addend(purerpc_channel: Any) -> None:
    stub = rls_grpc.RateLimitServiceStub(purerpc_channel)
    address = descriptor(("remote_address", "10.0.0.2"))
    zero = await stub.ShouldRateLimit(
        RateLimitRequest(domain="acme", descriptors=[address], hits_addend=0), metadata=KEY
    )
    assert zero.statuses[0].limit_remaining == 9
    five = await stub.ShouldRateLimit(
        RateLimitRequest(domain="acme", descriptors=[address], hits_addend=5), metadata=KEY
    )
    assert five.statuses[0].limit_remaining == 4
    own = descriptor(("remote_address", "10.0.0.2"), hits=5)
    over = await stub.ShouldRateLimit(
        RateLimitRequest(domain="acme", descriptors=[own], hits_addend=1), metadata=KEY
    )
    assert over.overall_code == OVER


async def test_rls_unknown_domain_is_ok(purerpc_channel: Any) -> None:
    stub = rls_grpc.RateLimitServiceStub(purerpc_channel)
    reply = await stub.ShouldRateLimit(
        RateLimitRequest(domain="nobody", descriptors=[descriptor(("a", "b"))]), metadata=KEY
    )
    assert reply.overall_code == OK
    assert not reply.statuses[0].HasField("current_limit")


async def test_rls_shadow_reports_ok(purerpc_channel: Any) -> None:
    stub = rls_grpc.RateLimitServiceStub(purerpc_channel)
    request = RateLimitRequest(domain="acme", descriptors=[descriptor(("shadow", "x"))])
    request.descriptors[0].ClearField("entries")
    request.descriptors[0].entries.add(key="shadow", value="x")
    # resource "shadow=x" matches no policy; use the exact shadow resource
    shadow = RateLimitRequest(domain="acme", descriptors=[])
    shadow.descriptors.add().entries.add(key="shadow", value="x")
    for _ in range(3):
        reply = await stub.ShouldRateLimit(shadow, metadata=KEY)
        assert reply.overall_code == OK


async def test_rls_errors(purerpc_channel: Any) -> None:
    stub = rls_grpc.RateLimitServiceStub(purerpc_channel)
    request = RateLimitRequest(domain="acme", descriptors=[descriptor(("path", "/x"))])
    assert await _code(stub.ShouldRateLimit(request)) == StatusCode.UNAUTHENTICATED
    empty = RateLimitRequest(domain="acme")
    assert await _code(stub.ShouldRateLimit(empty, metadata=KEY)) == StatusCode.INVALID_ARGUMENT
    no_domain = RateLimitRequest(descriptors=[descriptor(("path", "/x"))])
    assert await _code(stub.ShouldRateLimit(no_domain, metadata=KEY)) == (
        StatusCode.INVALID_ARGUMENT
    )


# grpcio client, in a thread


def _grpcio_calls(address: tuple[str, int], stubs: dict[str, ModuleType]) -> list[Any]:
    results: list[Any] = []
    with grpc.insecure_channel(f"{address[0]}:{address[1]}") as channel:
        helios = stubs["helios"].RateLimitServiceStub(channel)
        request = pb.AllowRequest(tenant="acme", resource="demo")
        for _ in range(4):
            results.append(helios.Allow(request, metadata=KEY, timeout=5).allowed)
        quota = helios.GetQuota(
            pb.GetQuotaRequest(tenant="acme", resource="demo"), metadata=KEY, timeout=5
        )
        results.append(quota.remaining)
        for metadata in ((), (("x-api-key", "wrong"),)):
            try:
                helios.Allow(request, metadata=metadata, timeout=5)
            except grpc.RpcError as error:
                results.append(error.code())
        try:
            helios.Allow(pb.AllowRequest(tenant="acme", resource="x"), metadata=KEY, timeout=5)
        except grpc.RpcError as error:
            results.append(error.code())
        batch = helios.AllowBatch(
            pb.AllowBatchRequest(checks=[pb.AllowRequest(tenant="acme", resource="demo")]),
            metadata=KEY,
            timeout=5,
        )
        results.append(batch.results[0].allowed)
        # Bytes that are not a message: INVALID_ARGUMENT, and the server goes on.
        raw = channel.unary_unary("/helios.v1.RateLimitService/Allow")
        try:
            raw(b"\xff\xff\xff", metadata=KEY, timeout=5)
        except grpc.RpcError as error:
            results.append(error.code())
        rls = stubs["envoy"].RateLimitServiceStub(channel)
        reply = rls.ShouldRateLimit(
            RateLimitRequest(domain="acme", descriptors=[descriptor(("path", "/g"))]),
            metadata=KEY,
            timeout=5,
        )
        results.append(reply.overall_code)
    return results


async def test_grpcio_client(grpc_address: tuple[str, int], grpcio_stubs: Any) -> None:
    results = await trio.to_thread.run_sync(_grpcio_calls, grpc_address, grpcio_stubs)
    assert results == [
        True,
        True,
        True,
        False,
        0,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.NOT_FOUND,
        False,
        grpc.StatusCode.INVALID_ARGUMENT,
        OK,
    ]


async def test_binds_configured_host_only(grpc_address: tuple[str, int]) -> None:
    host, port = grpc_address
    assert host == "127.0.0.1"
    # Another address of this machine is not listened on.
    with socket.socket() as probe:
        probe.bind(("127.0.0.2", port))
