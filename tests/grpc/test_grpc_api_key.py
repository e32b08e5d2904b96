"""The API key of a gRPC call: where it is read, and a key given more than once.

The rule is the same for the gateway's services and the control plane's, and
the HTTP data plane's: ``x-api-key`` wins over ``authorization: Bearer``, and
either of them may be repeated only as the same key; otherwise the call is
UNAUTHENTICATED.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
import trio

from helios.control.grpc import ControlGrpcServer
from helios.control.plane import ControlPlane
from helios.errors import Unauthenticated
from helios.grpc.generated.helios.v1 import control_pb2
from helios.grpc.generated.helios.v1 import ratelimit_pb2 as pb
from helios.grpc.server import api_key
from helios.store.kv import MemoryStore
from tests.unit.support import API_KEY

REPEATED = "the API key is given more than once"


@pytest.mark.parametrize(
    ("metadata", "key"),
    [
        ((), None),
        ((("x-api-key", "k"),), "k"),
        ((("X-Api-Key", " k "),), "k"),
        ((("authorization", "Bearer k"),), "k"),
        ((("authorization", "bearer  k"),), "k"),
        ((("authorization", "Basic k"),), None),
        # Blank counts as absent, so that the key given another way is found.
        ((("x-api-key", " "), ("authorization", "Bearer k")), "k"),
        ((("x-api-key", "k"), ("authorization", "Bearer ")), "k"),
        # Binary metadata is never a key.
        ((("x-api-key-bin", b"k"), ("x-api-key", "k")), "k"),
        # The same key again is still one key.
        ((("x-api-key", "k"), ("x-api-key", "k")), "k"),
        ((("x-api-key", "k"), ("authorization", "Bearer k")), "k"),
        # A Basic credential is not a key, so it does not clash with one.
        ((("x-api-key", "k"), ("authorization", "Basic j")), "k"),
        # x-api-key wins over a Bearer token, which may be meant for another service.
        ((("x-api-key", "k"), ("authorization", "Bearer j")), "k"),
        ((("authorization", "Bearer j"), ("x-api-key", "k")), "k"),
    ],
)
def test_the_key_read_from_metadata(metadata: Any, key: str | None) -> None:
    assert api_key(metadata) == key


@pytest.mark.parametrize(
    "metadata",
    [
        (("x-api-key", "k"), ("x-api-key", "j")),
        (("x-api-key", "j"), ("x-api-key", "k")),
        (("authorization", "Bearer k"), ("authorization", "Bearer j")),
    ],
)
def test_two_different_keys_are_refused(metadata: Any) -> None:
    with pytest.raises(Unauthenticated) as info:
        api_key(metadata)
    assert info.value.message == REPEATED
    assert info.value.field == "api_key"


def _call(target: str, method: str, request: Any, response_type: Any, metadata: Any) -> Any:
    """One grpcio call: its reply, or its status code and details."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        try:
            return call(request, metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            return error.code(), error.details()


def _calls(
    address: tuple[str, int], method: str, request: Any, response_type: Any, metadatas: Any
) -> list[Any]:
    target = f"{address[0]}:{address[1]}"
    return [_call(target, method, request, response_type, metadata) for metadata in metadatas]


UNAUTHENTICATED = (grpc.StatusCode.UNAUTHENTICATED, REPEATED)


async def test_the_gateway_refuses_two_different_keys(
    grpc_address: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    metadatas = [
        # Either order: neither key wins.
        (("x-api-key", API_KEY), ("x-api-key", "other-key")),
        (("x-api-key", "other-key"), ("x-api-key", API_KEY)),
        (("authorization", f"Bearer {API_KEY}"), ("authorization", "Bearer other-key")),
        # x-api-key wins over a Bearer token; the same key twice is one key.
        (("x-api-key", API_KEY), ("authorization", "Bearer other-key")),
        (("x-api-key", API_KEY), ("x-api-key", API_KEY)),
    ]
    seen = await trio.to_thread.run_sync(
        _calls,
        grpc_address,
        "/helios.v1.RateLimitService/Allow",
        pb.AllowRequest(tenant="acme", resource="demo"),
        pb.Decision,
        metadatas,
    )
    assert seen[:3] == [UNAUTHENTICATED] * 3
    # Nothing was charged for the refused calls.
    assert seen[3].allowed and seen[3].remaining == 2
    assert seen[4].allowed and seen[4].remaining == 1
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


ADMIN_KEY = "admin-key"


async def test_the_control_plane_refuses_two_different_keys(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server = ControlGrpcServer(ControlPlane(MemoryStore()), [ADMIN_KEY])
    address = await nursery.start(server.serve, "127.0.0.1", 0)
    metadatas = [
        (("x-api-key", ADMIN_KEY), ("x-api-key", "other-key")),
        (("authorization", "Bearer other-key"), ("authorization", f"Bearer {ADMIN_KEY}")),
        (("x-api-key", ADMIN_KEY), ("x-api-key", ADMIN_KEY)),
        (("authorization", "Bearer other-key"), ("x-api-key", ADMIN_KEY)),
    ]
    seen = await trio.to_thread.run_sync(
        _calls,
        address,
        "/helios.v1.ControlService/ListTenants",
        control_pb2.ListTenantsRequest(),
        control_pb2.ListTenantsResponse,
        metadatas,
    )
    assert seen[:2] == [UNAUTHENTICATED] * 2
    assert not seen[2].tenants and not seen[3].tenants
    # Refused as the caller's fault, not logged as the server's.
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
