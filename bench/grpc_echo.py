"""A bare purerpc helios.v1.RateLimitService for ``bench/grpc_bench.py``.

It answers ``Allow`` with a constant :class:`Decision` and ``AllowBatch`` with
one constant decision per check, deciding nothing: no API key, no policy
lookup, no bucket. It is served through Helios's own listener machinery
(:class:`helios.grpc.transport.GrpcListener`: the anyio listener bound to one host,
the same purerpc connection handler and strict stream), so the bare service
and the ``helios`` gateway differ only in the work done per call.

Usage::

    python -m bench.grpc_echo [--host 127.0.0.1] --port PORT
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from typing import Any

import trio

from helios.grpc.generated.helios.v1 import ratelimit_grpc
from helios.grpc.generated.helios.v1 import ratelimit_pb2 as pb
from helios.grpc.transport import GrpcListener

# Field values shaped like a Helios answer for tenant "acme", resource "demo"
# under bench/policies.toml, so the response messages are of similar size.
DECISION = pb.Decision(
    allowed=True,
    tenant="acme",
    resource="demo",
    policy="*/*",
    limit=1_000_000_000,
    remaining=999_999_999,
    reset_seconds=1,
    reset_time=1_800_000_000,
    mode="fast",
    would_allow=True,
    window_seconds=1.0,
)


class EchoServicer(ratelimit_grpc.RateLimitServiceServicer):
    """Answers without deciding anything."""

    def __init__(self) -> None:
        self._batches: dict[int, pb.AllowBatchResponse] = {}

    async def Allow(  # type: ignore[override]
        self, message: pb.AllowRequest, request: Any
    ) -> pb.Decision:
        return DECISION

    async def AllowBatch(  # type: ignore[override]
        self, message: pb.AllowBatchRequest, request: Any
    ) -> pb.AllowBatchResponse:
        size = len(message.checks)
        response = self._batches.get(size)
        if response is None:
            response = self._batches[size] = pb.AllowBatchResponse(results=[DECISION] * size)
        return response

    async def GetQuota(  # type: ignore[override]
        self, message: pb.GetQuotaRequest, request: Any
    ) -> pb.Quota:
        return pb.Quota(tenant=message.tenant, resource=message.resource or "default")


def echo_server() -> GrpcListener:
    """Helios's gRPC listener serving only :class:`EchoServicer`."""
    return GrpcListener({"helios.v1.RateLimitService": EchoServicer().service})


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description="Bare purerpc echo RateLimitService.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="port to bind")
    return parser.parse_args(argv)


async def _serve(host: str, port: int) -> None:
    server = echo_server()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.serve, host, port)
        print(f"grpc echo listening on {bound[0]}:{bound[1]}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until killed."""
    args = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(_serve, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
