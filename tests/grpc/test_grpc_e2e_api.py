"""The gRPC APIs of the real ``helios`` process, over real sockets: grpcio and purerpc clients."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import grpc
import purerpc
import pytest
import trio
from grpc_e2e_support import (  # noqa: F401 - fixtures, found by name
    API_KEY,
    BEARER,
    KEY,
    GrpcHelios,
    GrpcHeliosFactory,
    RedisServer,
    grpc_helios_fixture,
    redis_fixture,
    stalled,
)
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

pytestmark = pytest.mark.slow

OK = RateLimitResponse.Code.OK
OVER = RateLimitResponse.Code.OVER_LIMIT

POLICIES = """\
[[policies]]
tenant = "acme"
resource = "grpcio"
algorithm = "fixed_window"
limit = 3
window = "1h"

[[policies]]
tenant = "acme"
resource = "purerpc"
algorithm = "fixed_window"
limit = 3
window = "1h"

[[policies]]
tenant = "acme"
resource = "batch"
algorithm = "fixed_window"
limit = 3
window = "1h"

[[policies]]
tenant = "acme"
resource = "remote_address=*"
algorithm = "fixed_window"
limit = 10
window = "1h"

[[policies]]
tenant = "acme"
resource = "path=*"
algorithm = "fixed_window"
limit = 1
window = "1h"

[[policies]]
tenant = "acme"
resource = "shadow=*"
algorithm = "fixed_window"
limit = 1
window = "1h"
shadow = true
"""


@pytest.fixture(autouse=True)
def _collect_leaked_sockets() -> Iterator[None]:
    """purerpc's client leaves its socket to the garbage collector; collect it within the test."""
    yield
    gc.collect()


def same_bucket(decision: Any, quota: dict[str, Any]) -> None:
    """A gRPC decision (or quota) agrees with the HTTP quota JSON of the same bucket."""
    assert decision.limit == quota["limit"]
    assert decision.remaining == quota["remaining"]
    assert decision.policy == quota["policy"]
    assert decision.mode == quota["mode"]
    assert decision.tenant == quota["tenant"]
    assert decision.resource == quota["resource"]
    assert abs(decision.reset_time - quota["reset_time"]) <= 1


def _grpcio_session(target: str, stubs: dict[str, ModuleType]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    with grpc.insecure_channel(target) as channel:
        stub = stubs["helios"].RateLimitServiceStub(channel)
        request = pb.AllowRequest(tenant="acme", resource="grpcio")
        seen["allow"] = [stub.Allow(request, metadata=KEY, timeout=5) for _ in range(2)]
        seen["allow"].append(stub.Allow(request, metadata=BEARER, timeout=5))
        seen["denied"] = stub.Allow(request, metadata=KEY, timeout=5)
        quota = pb.GetQuotaRequest(tenant="acme", resource="grpcio")
        seen["quota"] = [stub.GetQuota(quota, metadata=KEY, timeout=5) for _ in range(2)]
        seen["batch"] = stub.AllowBatch(
            pb.AllowBatchRequest(
                checks=[
                    pb.AllowRequest(tenant="acme", resource="batch", cost=2),
                    pb.AllowRequest(tenant="acme", resource="nothing"),
                    pb.AllowRequest(tenant="acme", resource="batch", cost=2),
                ]
            ),
            metadata=BEARER,
            timeout=5,
        )
        codes = []
        for metadata, message in (
            ((), request),
            ((("x-api-key", "wrong"),), request),
            ((("authorization", "Bearer wrong"),), request),
            (KEY, pb.AllowRequest(resource="grpcio")),
            (KEY, pb.AllowRequest(tenant="acme", resource="nothing")),
        ):
            try:
                stub.Allow(message, metadata=metadata, timeout=5)
            except grpc.RpcError as error:
                codes.append(error.code())
            else:
                codes.append(None)
        seen["codes"] = codes
    return seen


async def test_grpcio_client(grpc_helios: GrpcHeliosFactory, grpcio_stubs: Any) -> None:
    process = grpc_helios(POLICIES)
    seen = await trio.to_thread.run_sync(_grpcio_session, process.target, grpcio_stubs)
    assert [d.allowed for d in seen["allow"]] == [True, True, True]
    assert [d.remaining for d in seen["allow"]] == [2, 1, 0]
    denied = seen["denied"]
    assert not denied.allowed
    assert denied.retry_after_seconds >= 1
    http = process.http_quota("acme", "grpcio")
    same_bucket(denied, http)
    # GetQuota charges nothing, and says what HTTP says.
    assert [q.remaining for q in seen["quota"]] == [0, 0]
    same_bucket(seen["quota"][1], http)
    assert seen["quota"][1].algorithm == http["algorithm"] == "fixed_window"
    assert [(b.limit, b.window) for b in seen["quota"][1].bands] == [
        (b["limit"], b["window"]) for b in http["bands"]
    ]
    first, missing, third = seen["batch"].results
    assert first.allowed and first.remaining == 1 and not first.HasField("error")
    assert missing.error.code == "NOT_FOUND"
    assert missing.error.field == "resource"
    assert not missing.tenant and not missing.allowed
    assert not third.allowed and not third.HasField("error")
    assert process.http_quota("acme", "batch")["remaining"] == 1
    assert seen["codes"] == [
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
    ]


async def _code(call: Any) -> StatusCode:
    with pytest.raises(RpcFailedError) as info:
        await call
    return info.value.status.status_code


async def test_purerpc_client(grpc_helios: GrpcHeliosFactory) -> None:
    process = grpc_helios(POLICIES)
    async with purerpc.insecure_channel(process.grpc_host, process.grpc_port) as channel:
        stub = ratelimit_grpc.RateLimitServiceStub(channel)
        request = pb.AllowRequest(tenant="acme", resource="purerpc")
        first = await stub.Allow(request, metadata=BEARER)
        assert first.allowed and first.remaining == 2
        same_bucket(first, process.http_quota("acme", "purerpc"))
        for _ in range(2):
            assert (await stub.Allow(request, metadata=KEY)).allowed
        denied = await stub.Allow(request, metadata=KEY)
        assert not denied.allowed
        same_bucket(denied, process.http_quota("acme", "purerpc"))

        quota_request = pb.GetQuotaRequest(tenant="acme", resource="batch")
        for _ in range(2):
            quota = await stub.GetQuota(quota_request, metadata=KEY)
            assert quota.remaining == 3
        same_bucket(quota, process.http_quota("acme", "batch"))

        batch = await stub.AllowBatch(
            pb.AllowBatchRequest(
                checks=[
                    pb.AllowRequest(tenant="acme", resource="batch", cost=3),
                    pb.AllowRequest(tenant="acme", resource="batch"),
                ]
            ),
            metadata=KEY,
        )
        assert [r.allowed for r in batch.results] == [True, False]
        assert process.http_quota("acme", "batch")["remaining"] == 0

        assert await _code(stub.Allow(request)) == StatusCode.UNAUTHENTICATED
        assert await _code(stub.Allow(request, metadata=(("x-api-key", "no"),))) == (
            StatusCode.UNAUTHENTICATED
        )
        assert await _code(stub.Allow(pb.AllowRequest(resource="x"), metadata=KEY)) == (
            StatusCode.INVALID_ARGUMENT
        )
        nothing = pb.AllowRequest(tenant="acme", resource="nothing")
        assert await _code(stub.Allow(nothing, metadata=KEY)) == StatusCode.NOT_FOUND
        # Still answering on the same connection.
        assert not (await stub.Allow(request, metadata=KEY)).allowed
    # The key works over HTTP too: the same process, the same key set.
    assert process.http_quota("acme", "purerpc")["remaining"] == 0
    assert API_KEY


def descriptor(*entries: tuple[str, str], hits: int | None = None) -> RateLimitDescriptor:
    d = RateLimitDescriptor(entries=[RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries])
    if hits is not None:
        d.hits_addend.value = hits
    return d


async def _quota_remaining(stub: Any, resource: str) -> int:
    request = pb.GetQuotaRequest(tenant="acme", resource=resource)
    return int((await stub.GetQuota(request, metadata=KEY)).remaining)


async def test_envoy_rls(grpc_helios: GrpcHeliosFactory) -> None:
    await _envoy_rls_session(grpc_helios(POLICIES), "fast")


async def test_envoy_rls_in_strong_mode(grpc_helios: GrpcHeliosFactory, redis: RedisServer) -> None:
    await _envoy_rls_session(grpc_helios(POLICIES, redis_url=redis.url), "strong")


async def _envoy_rls_session(process: GrpcHelios, mode: str) -> None:
    """The same answers in either mode."""
    async with purerpc.insecure_channel(process.grpc_host, process.grpc_port) as channel:
        rls = rls_grpc.RateLimitServiceStub(channel)
        helios = ratelimit_grpc.RateLimitServiceStub(channel)

        # Two descriptors, the second over: OVER_LIMIT, the first not charged.
        both = RateLimitRequest(
            domain="acme",
            descriptors=[descriptor(("remote_address", "10.0.0.1")), descriptor(("path", "/a"))],
        )
        first = await rls.ShouldRateLimit(both, metadata=KEY)
        assert first.overall_code == OK
        assert [s.limit_remaining for s in first.statuses] == [9, 0]
        second = await rls.ShouldRateLimit(both, metadata=BEARER)
        assert second.overall_code == OVER
        assert [s.code for s in second.statuses] == [OK, OVER]
        assert await _quota_remaining(helios, "remote_address=10.0.0.1") == 9
        quota = process.http_quota("acme", "remote_address=10.0.0.1")
        assert (quota["remaining"], quota["mode"]) == (9, mode)
        # The headers HTTP sends, of the descriptor over its limit.
        headers = {h.key: h.value for h in second.response_headers_to_add}
        retry_after = int(headers["retry-after"])
        assert 1 <= retry_after <= 3600
        assert headers["ratelimit-policy"] == '"acme/path=*";q=1;w=3600'
        assert headers["ratelimit"] == f'"acme/path=*";r=0;t={retry_after}'
        assert (headers["x-ratelimit-limit"], headers["x-ratelimit-remaining"]) == ("1", "0")

        # hits_addend 0 counts as 1; 5 costs 5.
        address = descriptor(("remote_address", "10.0.0.2"))
        zero = await rls.ShouldRateLimit(
            RateLimitRequest(domain="acme", descriptors=[address], hits_addend=0), metadata=KEY
        )
        assert zero.overall_code == OK and zero.statuses[0].limit_remaining == 9
        five = await rls.ShouldRateLimit(
            RateLimitRequest(domain="acme", descriptors=[address], hits_addend=5), metadata=KEY
        )
        assert five.overall_code == OK and five.statuses[0].limit_remaining == 4
        assert await _quota_remaining(helios, "remote_address=10.0.0.2") == 4

        # A domain without any policy: OK.
        nobody = await rls.ShouldRateLimit(
            RateLimitRequest(domain="nobody", descriptors=[descriptor(("a", "b"))]), metadata=KEY
        )
        assert nobody.overall_code == OK
        assert not nobody.statuses[0].HasField("current_limit")

        # A shadow policy: OK every time, yet the denials are counted.
        before = process.metric("helios_rate_limits_total", result="shadow_denied")
        shadow = RateLimitRequest(domain="acme", descriptors=[descriptor(("shadow", "x"))])
        for _ in range(3):
            assert (await rls.ShouldRateLimit(shadow, metadata=KEY)).overall_code == OK
        after = process.metric("helios_rate_limits_total", result="shadow_denied")
        assert after - before == 2

        assert await _code(rls.ShouldRateLimit(both)) == StatusCode.UNAUTHENTICATED


async def test_envoy_rls_answers_unavailable_while_redis_stalls(
    grpc_helios: GrpcHeliosFactory, redis: RedisServer
) -> None:
    # Every policy here has the default failure_mode "local": HTTP still
    # decides in memory, but Envoy is told UNAVAILABLE and applies its own.
    process = grpc_helios(POLICIES, redis_url=redis.url)
    three = RateLimitRequest(
        domain="acme",
        descriptors=[
            descriptor(("remote_address", "10.0.0.9")),
            descriptor(("path", "/stall")),
            descriptor(("shadow", "s")),
        ],
    )
    async with purerpc.insecure_channel(process.grpc_host, process.grpc_port) as channel:
        rls = rls_grpc.RateLimitServiceStub(channel)
        assert (await rls.ShouldRateLimit(three, metadata=KEY)).overall_code == OK
        with stalled(redis):
            started = time.perf_counter()
            assert await _code(rls.ShouldRateLimit(three, metadata=KEY)) == (StatusCode.UNAVAILABLE)
            waited = time.perf_counter() - started
            assert process.http_quota("acme", "remote_address=10.0.0.9")["mode"] == "local"
    # One Redis timeout (200 ms), not one per descriptor, with room for a busy machine.
    assert waited < 0.5, waited
