"""The real ``helios`` process over gRPC: FAST/STRONG parity, deadlines while Redis stalls,
calls abandoned by their clients, the listener's address, shutdown with a call in flight,
and TLS."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
import trio
from grpc_e2e_support import (  # noqa: F401 - fixtures, found by name
    KEY,
    GrpcHeliosFactory,
    RedisServer,
    assert_stopped_cleanly,
    free_ports,
    grpc_helios_fixture,
    redis_fixture,
    stalled,
    start_helios,
)
from redis_servers import self_signed_certificate

from helios.grpc.generated.helios.v1 import ratelimit_pb2 as pb

pytestmark = pytest.mark.slow

POLICIES = """\
[[policies]]
tenant = "acme"
resource = "fixed"
algorithm = "fixed_window"
limit = 10
window = "1h"
failure_mode = "closed"

[[policies]]
tenant = "acme"
resource = "bucket"
algorithm = "token_bucket"
limit = 10
window = "1h"
failure_mode = "closed"
"""

COSTS = [1, 2, 3, 1, 2, 3, 1, 2, 3]


def _allow_sequence(target: str, stubs: dict[str, ModuleType]) -> list[tuple[str, bool, int]]:
    answers = []
    with grpc.insecure_channel(target) as channel:
        stub = stubs["helios"].RateLimitServiceStub(channel)
        for resource in ("fixed", "bucket"):
            for cost in COSTS:
                request = pb.AllowRequest(tenant="acme", resource=resource, cost=cost)
                decision = stub.Allow(request, metadata=KEY, timeout=5)
                answers.append((resource, decision.allowed, decision.remaining))
    return answers


async def test_fast_and_strong_answer_alike(
    grpc_helios: GrpcHeliosFactory, grpcio_stubs: Any, redis: RedisServer
) -> None:
    fast = grpc_helios(POLICIES)
    strong = grpc_helios(POLICIES, redis_url=redis.url)
    fast_answers = await trio.to_thread.run_sync(_allow_sequence, fast.target, grpcio_stubs)
    strong_answers = await trio.to_thread.run_sync(_allow_sequence, strong.target, grpcio_stubs)
    assert fast_answers == strong_answers
    # The sequence reaches the limits: some allowed, some denied.
    assert {allowed for _, allowed, _ in fast_answers} == {True, False}
    assert strong.http_quota("acme", "fixed")["mode"] == "strong"


def _allow(target: str, stubs: dict[str, ModuleType], timeout: float, resource: str) -> Any:
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=5)
        stub = stubs["helios"].RateLimitServiceStub(channel)
        request = pb.AllowRequest(tenant="acme", resource=resource)
        return stub.Allow(request, metadata=KEY, timeout=timeout)


def _deadline_passes(target: str, stubs: dict[str, ModuleType]) -> tuple[Any, float]:
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=5)
        stub = stubs["helios"].RateLimitServiceStub(channel)
        request = pb.AllowRequest(tenant="acme", resource="fixed")
        started = time.monotonic()
        try:
            stub.Allow(request, metadata=KEY, timeout=0.2)
        except grpc.RpcError as error:
            return error.code(), time.monotonic() - started
        return None, time.monotonic() - started


async def test_deadline_while_redis_stalls(
    grpc_helios: GrpcHeliosFactory, grpcio_stubs: Any, redis: RedisServer
) -> None:
    process = grpc_helios(
        POLICIES, redis_url=redis.url, settings={"HELIOS_REDIS_TIMEOUT_MS": "1000"}
    )
    first = await trio.to_thread.run_sync(_allow, process.target, grpcio_stubs, 5, "fixed")
    assert first.allowed and first.remaining == 9
    with stalled(redis):
        code, elapsed = await trio.to_thread.run_sync(
            _deadline_passes, process.target, grpcio_stubs
        )
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert elapsed < 0.2 + 0.3, elapsed
    # Redis is back: the server answers again, within a bound.
    started = time.monotonic()
    while True:
        try:
            after = await trio.to_thread.run_sync(_allow, process.target, grpcio_stubs, 2, "fixed")
            break
        except grpc.RpcError as error:
            assert time.monotonic() - started < 5, f"still failing: {error.code()}"
            await trio.sleep(0.1)
    assert after.allowed
    # The answers that follow are consistent (no reply of the stalled call is mistaken
    # for a later one): each call takes exactly one more.
    remaining = [after.remaining]
    for _ in range(3):
        decision = await trio.to_thread.run_sync(_allow, process.target, grpcio_stubs, 2, "fixed")
        remaining.append(decision.remaining)
    assert remaining == list(range(remaining[0], remaining[0] - 4, -1))
    assert process.http_quota("acme", "fixed")["remaining"] == remaining[-1]


ABANDONED_CALLS = 20


def _abandoned_calls(target: str, stubs: dict[str, ModuleType]) -> list[Any]:
    """Calls in flight at once, each giving up after 0.2 s; their status codes."""
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=5)
        stub = stubs["helios"].RateLimitServiceStub(channel)
        request = pb.AllowRequest(tenant="acme", resource="fixed")
        calls = [
            stub.Allow.future(request, metadata=KEY, timeout=0.2) for _ in range(ABANDONED_CALLS)
        ]
        codes = []
        for call in calls:
            try:
                call.result()
            except grpc.RpcError as error:
                codes.append(error.code())
            else:
                codes.append(None)
        return codes


async def test_calls_abandoned_by_their_clients_are_not_failures(
    grpc_helios: GrpcHeliosFactory, grpcio_stubs: Any, redis: RedisServer
) -> None:
    process = grpc_helios(
        POLICIES, redis_url=redis.url, settings={"HELIOS_REDIS_TIMEOUT_MS": "1000"}
    )
    first = await trio.to_thread.run_sync(_allow, process.target, grpcio_stubs, 5, "fixed")
    assert first.allowed

    def ended() -> float:
        return sum(
            process.metric("helios_requests_total", transport="grpc", code=code)
            for code in ("DEADLINE_EXCEEDED", "CANCELLED")
        )

    with stalled(redis):
        codes = await trio.to_thread.run_sync(_abandoned_calls, process.target, grpcio_stubs)
        assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * ABANDONED_CALLS
        # The server ends each call at its deadline (or when the client
        # resets its stream, whichever it sees first), and counts it.
        started = time.monotonic()
        while ended() < ABANDONED_CALLS:
            assert time.monotonic() - started < 5, ended()
            await trio.sleep(0.05)
    assert ended() == ABANDONED_CALLS
    # A client giving up is not the server's failure: nothing about it is logged.
    grpc_lines = [
        line for line in process.helios.log().splitlines() if "purerpc" in line or "grpc" in line
    ]
    assert not [line for line in grpc_lines if " WARNING " in line or " ERROR " in line]


async def test_listens_on_configured_host_only(
    grpc_helios: GrpcHeliosFactory, grpcio_stubs: Any
) -> None:
    process = grpc_helios(POLICIES, host="127.0.0.1")
    with pytest.raises(ConnectionRefusedError), socket.socket() as probe:
        probe.settimeout(2)
        probe.connect(("127.0.0.2", process.grpc_port))
    decision = await trio.to_thread.run_sync(_allow, process.target, grpcio_stubs, 5, "fixed")
    assert decision.allowed


IN_FLIGHT_CALLS = 8


async def _sigterm_round(
    grpc_helios: GrpcHeliosFactory, grpcio_stubs: Any, redis: RedisServer, tenant_resource: str
) -> list[Any]:
    """SIGTERM a process with calls in flight (Redis stalled); its exit code and the answers."""
    process = grpc_helios(
        POLICIES, redis_url=redis.url, settings={"HELIOS_REDIS_TIMEOUT_MS": "3000"}
    )
    # Connect (and warm the Redis connection) first.
    warm = await trio.to_thread.run_sync(_allow, process.target, grpcio_stubs, 5, tenant_resource)
    assert warm.allowed
    results: list[Any] = []

    def in_flight() -> None:
        begun = time.monotonic()
        try:
            results.append(_allow(process.target, grpcio_stubs, 5, tenant_resource))
        except grpc.RpcError as error:
            results.append((error.code(), error.details(), round(time.monotonic() - begun, 3)))

    try:
        with stalled(redis):
            async with trio.open_nursery() as nursery:
                for _ in range(IN_FLIGHT_CALLS):
                    nursery.start_soon(trio.to_thread.run_sync, in_flight)
                await trio.sleep(0.5)
                process.helios.terminate()
                await trio.sleep(0.3)
                assert process.helios.process.poll() is None, "exited with calls in flight"
                # Redis answers again (SIGCONT); the calls complete, then the process exits.
                redis.process.send_signal(signal.SIGCONT)
    finally:
        code = await trio.to_thread.run_sync(process.helios.process.wait, 10)
    assert code == 0, process.helios.log()
    return results


# The bug shows in about half of the shutdowns; six rounds make a pass with it rare.
SIGTERM_ROUNDS = 6


async def test_sigterm_with_call_in_flight(
    grpc_helios: GrpcHeliosFactory, grpcio_stubs: Any, redis: RedisServer
) -> None:
    for round_ in range(SIGTERM_ROUNDS):
        resource = "fixed" if round_ % 2 == 0 else "bucket"
        results = await _sigterm_round(grpc_helios, grpcio_stubs, redis, resource)
        failed = [result for result in results if isinstance(result, tuple)]
        assert not failed, (round_, failed)
        redis.execute("FLUSHALL")
        assert sorted(d.remaining for d in results) == list(range(1, IN_FLIGHT_CALLS + 1))


def _secure_allow(target: str, root: bytes, stubs: dict[str, ModuleType]) -> Any:
    credentials = grpc.ssl_channel_credentials(root_certificates=root)
    with grpc.secure_channel(target, credentials) as channel:
        stub = stubs["helios"].RateLimitServiceStub(channel)
        request = pb.AllowRequest(tenant="acme", resource="fixed", cost=3)
        return stub.Allow(request, metadata=KEY, timeout=5)


async def test_tls(grpcio_stubs: Any, tmp_path: Path) -> None:
    certificate, key = self_signed_certificate(tmp_path)
    (port,) = free_ports(1)
    helios = start_helios(
        tmp_path / "helios",
        settings={"HELIOS_GRPC_HOST": "127.0.0.1", "HELIOS_GRPC_PORT": str(port)},
        policies=POLICIES,
        tls=(certificate, key),
    )
    try:
        decision = await trio.to_thread.run_sync(
            _secure_allow, f"127.0.0.1:{port}", certificate.read_bytes(), grpcio_stubs
        )
    finally:
        code = helios.stop()
    assert decision.allowed and decision.remaining == 7
    assert_stopped_cleanly(helios, code)
