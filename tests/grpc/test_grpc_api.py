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


# Envoy's rate limit service: see test_rls.py, in FAST and STRONG mode.


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
