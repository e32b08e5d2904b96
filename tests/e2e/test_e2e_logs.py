"""What the real process logs: JSON lines with the fields operators rely on, and no secret.

One ``helios --role all`` at level debug, in JSON, gets every kind of request
on every listener (with good, bad and misplaced keys, and malformed requests);
then every line of its log is checked.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable

import grpc
import httpx
import pytest
from e2e_support import ADMIN_KEY, API_KEY, HeliosProcess, free_ports

from helios.grpc.generated.envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import (
    RateLimitDescriptor,
)
from helios.grpc.generated.envoy.service.ratelimit.v3 import rls_pb2
from helios.grpc.generated.helios.v1 import control_pb2, ratelimit_pb2

pytestmark = pytest.mark.slow

POLICIES = """\
[[policies]]
tenant = "*"
resource = "*"
limit = 2
window = "1h"
"""

# Keys a caller presents that are not valid: they must not be logged either.
WRONG_KEY = "wrong-key-5d1c0e9a"
WRONG_ADMIN_KEY = "wrong-admin-key-83b2f4"
COLLECTOR_TOKEN = "collector-token-9e41aa"
APPLY_SECONDS = 5.0


def send_raw(helios: HeliosProcess, data: bytes) -> bytes:
    """Send bytes as they are to the data plane; what came back before it closed."""
    received = b""
    # A server that refuses a request closes with unread bytes: a reset.
    with (
        socket.create_connection(("127.0.0.1", helios.http_port), timeout=5.0) as sock,
        contextlib.suppress(ConnectionResetError, BrokenPipeError),
    ):
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):
            received += chunk
    return received


def exercise_the_gateway(helios: HeliosProcess, keys: list[str]) -> None:
    """Every data-plane route, with the key in each place a client may put it."""
    with helios.client() as client:
        for key in keys:
            statuses = {
                client.get(f"/allow?tenant=acme&resource=r&api_key={key}").status_code,
                client.get(
                    "/allow?tenant=acme&resource=r", headers={"Authorization": f"Bearer {key}"}
                ).status_code,
                client.post(
                    "/api/v1/allow",
                    json={"tenant": "acme", "resource": "r", "cost": 1},
                    headers={"X-API-Key": key},
                ).status_code,
                client.post(
                    "/api/v1/allow/batch",
                    json={"checks": [{"tenant": "acme", "resource": "b"}] * 3},
                    headers={"X-API-Key": key},
                ).status_code,
                client.get("/api/v1/quota/acme?resource=r", headers={"X-API-Key": key}).status_code,
            }
            assert statuses <= {200, 429, 401, 403}, statuses
        # Malformed: bad values, a bad body, a bad route, a bad method; each with a key.
        headers = {"X-API-Key": keys[0]}
        assert client.get("/allow?tenant=acme&resource=r&cost=-1", headers=headers).is_client_error
        assert client.get(f"/allow?tenant=acme&api_key={keys[0]}&api_key=x").is_client_error
        assert client.post(
            "/api/v1/allow/batch", content=b"{not json", headers=headers
        ).is_client_error
        assert client.get("/no/such/route", headers=headers).status_code == 404
        assert client.delete("/allow", headers=headers).status_code == 405
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 200
    # Below HTTP: a broken request line and a header over the limit, key included.
    send_raw(helios, f"GET /allow?api_key={keys[0]} HTTP/9.9\r\n\r\n".encode())
    send_raw(
        helios,
        f"GET /allow HTTP/1.1\r\nHost: x\r\nX-API-Key: {keys[0]}\r\n".encode()
        + b"X-Pad: "
        + b"a" * 70_000
        + b"\r\n\r\n",
    )
    response = httpx.get(f"{helios.metrics_url}/metrics", timeout=5.0)
    assert response.status_code == 200


def exercise_the_control_plane(helios: HeliosProcess) -> str:
    """Tenants, policies, a key issued, used and revoked, and refused admin keys; the key."""
    with helios.admin() as admin:
        assert admin.post("/v1/tenants", json={"name": "acme"}).status_code == 201
        assert admin.get("/v1/tenants").status_code == 200
        policy = {"limit": 5, "window": "1m"}
        assert admin.put("/v1/tenants/acme/policies/search", json=policy).status_code == 201
        assert admin.get("/v1/tenants/acme/policies").status_code == 200
        issued = admin.post("/v1/tenants/acme/keys", json={"description": "logs test"})
        assert issued.status_code == 201
        key: str = issued.json()["key"]
        key_id = issued.json()["id"]
        assert admin.get("/v1/tenants/acme/keys").status_code == 200

        # The issued key reaches the gateway; it is used in each place a key goes.
        wait_until(lambda: allow_status(helios, key) == 200)
        exercise_the_gateway(helios, [key])

        assert admin.delete(f"/v1/tenants/acme/keys/{key_id}").status_code == 204
        wait_until(lambda: allow_status(helios, key) == 401)
        assert admin.post("/v1/tenants/acme/reset", json={}).status_code == 202

    with httpx.Client(base_url=helios.control_url, timeout=5.0) as anonymous:
        assert anonymous.get("/v1/tenants").status_code == 401
        assert (
            anonymous.get("/v1/tenants", headers={"X-API-Key": WRONG_ADMIN_KEY}).status_code == 401
        )
        bearer = {"Authorization": f"Bearer {ADMIN_KEY}"}
        assert anonymous.get("/v1/tenants", headers=bearer).status_code == 200
        # A key in the query string is not accepted, and not logged.
        assert anonymous.get(f"/v1/tenants?api_key={ADMIN_KEY}").status_code == 401
        # A tenant's key on the control plane, and a key in a body.
        assert anonymous.get("/v1/tenants", headers={"X-API-Key": API_KEY}).status_code in (
            401,
            403,
        )
        assert (
            anonymous.post(
                "/v1/tenants", json={"name": "beta", "description": key}, headers=bearer
            ).status_code
            == 201
        )
        assert anonymous.post("/v1/tenants", content=b"{", headers=bearer).status_code == 400
        assert anonymous.get("/health").status_code == 200
    return key


def exercise_grpc(gateway_port: int, control_port: int, keys: list[str]) -> None:
    """The gateway's gRPC API and Envoy's RLS, and the control API, with each key given.

    grpcio sends the metadata through HPACK, whose own debug log would show
    every header it decodes.
    """
    calls = [
        (
            gateway_port,
            "/helios.v1.RateLimitService/Allow",
            ratelimit_pb2.AllowRequest(tenant="acme", resource="g"),
            ratelimit_pb2.Decision,
        ),
        (
            gateway_port,
            "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
            rls_pb2.RateLimitRequest(
                domain="acme",
                descriptors=[
                    RateLimitDescriptor(entries=[RateLimitDescriptor.Entry(key="k", value="v")])
                ],
            ),
            rls_pb2.RateLimitResponse,
        ),
        (
            control_port,
            "/helios.v1.ControlService/ListTenants",
            control_pb2.ListTenantsRequest(),
            control_pb2.ListTenantsResponse,
        ),
    ]
    for port, method, request, reply in calls:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(
                method,
                request_serializer=type(request).SerializeToString,
                response_deserializer=reply.FromString,
            )
            for key in keys:
                for metadata in (("x-api-key", key),), (("authorization", f"Bearer {key}"),):
                    with contextlib.suppress(grpc.RpcError):
                        call(request, metadata=metadata, timeout=5.0)


def allow_status(helios: HeliosProcess, key: str) -> int:
    with helios.client() as client:
        response = client.get(
            "/allow", params={"tenant": "acme", "resource": "search"}, headers={"X-API-Key": key}
        )
    return response.status_code


def wait_until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + APPLY_SECONDS
    while not check():
        assert time.monotonic() < deadline, f"not within {APPLY_SECONDS} s"
        time.sleep(0.05)


def test_json_logs_at_debug_hold_no_key(helios_factory: Callable[..., HeliosProcess]) -> None:
    control_metrics_port, grpc_port, control_grpc_port, collector_port = free_ports(4)
    helios = helios_factory(
        policies=POLICIES,
        settings={
            "HELIOS_LOG_FORMAT": "json",
            "HELIOS_LOG_LEVEL": "debug",
            "HELIOS_CONTROL_METRICS_PORT": str(control_metrics_port),
            "HELIOS_GRPC_PORT": str(grpc_port),
            "HELIOS_CONTROL_GRPC_PORT": str(control_grpc_port),
            # Every request traced, to a collector that is not there, whose
            # URL carries a token: exporting fails, and says so without it.
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": (
                f"http://127.0.0.1:{collector_port}/v1/traces?token={COLLECTOR_TOKEN}"
            ),
            "OTEL_TRACES_SAMPLER": "always_on",
        },
    )
    exercise_the_gateway(helios, [API_KEY, WRONG_KEY])
    issued = exercise_the_control_plane(helios)
    exercise_grpc(grpc_port, control_grpc_port, [API_KEY, WRONG_KEY, ADMIN_KEY, WRONG_ADMIN_KEY])
    response = httpx.get(f"http://127.0.0.1:{control_metrics_port}/metrics", timeout=5.0)
    assert "helios_control_requests_total" in response.text

    assert helios.stop() == 0
    text = helios.log()
    lines = text.splitlines()
    assert lines
    for line in lines:
        document = json.loads(line)
        assert isinstance(document, dict), line
        assert {"time", "level", "logger", "message"} <= document.keys(), line
        assert document["level"] in ("debug", "info", "warning", "error"), line
        # Other libraries' loggers speak only of what an operator must know.
        helios_line = document["logger"] == "helios" or document["logger"].startswith("helios.")
        assert helios_line or document["level"] in ("warning", "error"), line

    for secret in (API_KEY, ADMIN_KEY, issued, WRONG_KEY, WRONG_ADMIN_KEY, COLLECTOR_TOKEN):
        assert secret not in text, f"a key is in the log: {secret!r}"
    # Nor any long part of the issued key (its id, a prefix, is public).
    assert issued[-16:] not in text

    loggers = {json.loads(line)["logger"] for line in lines}
    access = [json.loads(line) for line in lines if '"helios.control.access"' in line]
    assert "helios" in loggers
    assert any(
        entry["message"].split()[1:4] == ["POST", "/v1/tenants/acme/keys", "201"]
        for entry in access
    ), access
    assert any(entry["message"].split()[1:4] == ["GET", "/v1/tenants", "401"] for entry in access)
    messages = [json.loads(line)["message"] for line in lines]
    assert any(message.startswith("helios ") and " started: " in message for message in messages)
    # The absent collector was reported, without its token, and the spans
    # still queued at the end were dropped within the shutdown's bound.
    assert any("?[redacted]" in message for message in messages)
    assert "could not export the last spans within 5 s; dropped them" in messages
    assert "stopped" in messages
