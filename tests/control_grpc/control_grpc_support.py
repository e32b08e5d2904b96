"""What the control-plane gRPC tests share: constants, and a running server with its client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
import trio

from helios.control.grpc import ControlGrpcServer
from helios.control.plane import ControlPlane
from helios.store.kv import MemoryStore

ADMIN_KEY = "admin-key"
ADMIN = (("x-api-key", ADMIN_KEY),)
# 2027-01-15T08:00:00Z: every time the control plane shows.
NOW = 1_800_000_000.0
NOW_TEXT = "2027-01-15T08:00:00Z"


@dataclass
class Control:
    """A running ControlGrpcServer, its plane and store, and a grpcio stub for it."""

    server: ControlGrpcServer
    plane: ControlPlane
    store: MemoryStore
    address: tuple[str, int]
    stub: Any

    async def call(self, method: str, request: Any, *, metadata: Any = ADMIN) -> Any:
        """One blocking grpcio call, in a worker thread so the server keeps running."""
        function = getattr(self.stub, method)
        call = partial(function, request, metadata=metadata, timeout=10)
        return await trio.to_thread.run_sync(call)

    async def fail(
        self, method: str, request: Any, *, metadata: Any = ADMIN
    ) -> tuple[grpc.StatusCode, str]:
        """The status code and message of a call that must fail."""
        try:
            await self.call(method, request, metadata=metadata)
        except grpc.RpcError as error:
            return error.code(), error.details()
        raise AssertionError(f"{method} succeeded")


StartControl = Callable[..., Awaitable[Control]]
