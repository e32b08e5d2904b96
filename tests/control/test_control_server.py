"""ControlHttpServer: hypercorn's trio worker on a real socket, spoken to by httpx."""

from __future__ import annotations

import socket

import httpx
import pytest
import trio
from control_support import ADMIN_KEY

from helios.control.plane import ControlPlane
from helios.control.rest import ControlHttpServer, create_app
from helios.gateway.auth import KeyRing
from helios.store.kv import MemoryStore


class SlowGatewaysPlane(ControlPlane):
    """Listing gateways waits until the test lets it go: a request held in flight."""

    def __init__(self) -> None:
        super().__init__(MemoryStore())
        self.entered = trio.Event()
        self.release = trio.Event()

    async def list_gateways(self) -> list:  # type: ignore[type-arg]
        self.entered.set()
        await self.release.wait()
        return await super().list_gateways()


async def test_serves_over_a_socket_on_port_0_and_drains() -> None:
    app = create_app(ControlPlane(MemoryStore()), KeyRing([ADMIN_KEY]))
    server = ControlHttpServer(app, grace_seconds=30)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve, "127.0.0.1", 0)
        assert host == "127.0.0.1"
        assert port > 0
        async with httpx.AsyncClient(
            base_url=f"http://{host}:{port}", headers={"X-API-Key": ADMIN_KEY}
        ) as client:
            created = await client.post("/v1/tenants", json={"name": "acme"})
            assert created.status_code == 201
            assert created.headers["etag"] == '"1"'
            put = await client.put(
                "/v1/tenants/acme/policies/key1=value1/key2=value2",
                json={"limit": 5, "window": "1s"},
            )
            assert put.status_code == 201
            listed = await client.get("/v1/tenants/acme/policies")
            assert [p["resource"] for p in listed.json()["policies"]] == ["key1=value1/key2=value2"]
            unauthenticated = await client.get("/v1/tenants", headers={"X-API-Key": ""})
            assert unauthenticated.status_code == 401
            assert "server" not in unauthenticated.headers
            # The client keeps its idle connection open: draining closes it.
            server.drain()
            with trio.fail_after(2):
                await server.wait_closed()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(f"http://{host}:{port}/health")


async def test_a_request_in_flight_finishes_after_drain() -> None:
    plane = SlowGatewaysPlane()
    # A long grace period: the server must close as soon as the request is done.
    server = ControlHttpServer(create_app(plane, KeyRing([ADMIN_KEY])), grace_seconds=30)
    answers: list[httpx.Response] = []
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve, "127.0.0.1", 0)
        url = f"http://{host}:{port}"
        async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": ADMIN_KEY}) as client:

            async def ask() -> None:
                answers.append(await client.get("/v1/gateways"))

            nursery.start_soon(ask)
            await plane.entered.wait()
            server.drain()
            # Give hypercorn a moment to close its listener, then let the request go on.
            await trio.sleep(0.1)
            with pytest.raises(httpx.ConnectError):
                async with httpx.AsyncClient() as other:
                    await other.get(f"{url}/health")
            plane.release.set()
            with trio.fail_after(2):
                await server.wait_closed()
    assert [answer.status_code for answer in answers] == [200]
    assert answers[0].json() == {"gateways": []}


async def test_a_port_in_use_names_the_settings() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ControlHttpServer(create_app(ControlPlane(MemoryStore()), KeyRing([ADMIN_KEY])))
        with pytest.raises(OSError, match=r"control\.http_host, control\.http_port"):
            await server.serve("127.0.0.1", port)
    with trio.fail_after(1):
        await server.wait_closed()
