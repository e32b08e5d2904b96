"""Paths whose names are not text, on a real socket (the test client decodes paths itself)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio
from control_support import ADMIN_KEY

from helios.control.plane import ControlPlane
from helios.control.rest import ControlHttpServer, create_app
from helios.gateway.auth import KeyRing
from helios.store.kv import MemoryStore


@pytest.fixture
async def control() -> AsyncIterator[tuple[str, MemoryStore]]:
    store = MemoryStore()
    server = ControlHttpServer(create_app(ControlPlane(store), KeyRing([ADMIN_KEY])))
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve, "127.0.0.1", 0)
        yield f"http://{host}:{port}", store
        server.drain()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("method", "path", "words"),
    [
        ("GET", "/v1/tenants/a%FFb", "not valid UTF-8"),
        ("PUT", "/v1/tenants/acme/policies/a%0Ab", "control characters"),
        ("PUT", "/v1/tenants/acme/policies/a%00b", "control characters"),
    ],
)
async def test_a_path_that_is_not_text_is_400_and_writes_nothing(
    control: tuple[str, MemoryStore], method: str, path: str, words: str
) -> None:
    url, store = control
    headers = {"X-API-Key": ADMIN_KEY}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=5.0) as client:
        assert (await client.post("/v1/tenants", json={"name": "acme"})).status_code == 201
        revision = store.revision
        answer = await client.request(method, path, json={"limit": 1, "window": "1s"})
        # Without a key, still 401 first.
        anonymous = await client.request(method, path, headers={"X-API-Key": ""})
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == "path"
    assert words in answer.json()["error"]
    assert anonymous.status_code == 401
    assert store.revision == revision
