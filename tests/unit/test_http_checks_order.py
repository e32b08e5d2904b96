"""What a request is checked for, and in which order."""

from __future__ import annotations

import trio

from unit.support import allow_target, make_gateway, make_server, open_connection

DEMO = {"tenant": "acme", "resource": "demo", "limit": 10, "window": "1m"}


async def test_a_caller_without_a_valid_key_gets_401_before_any_validation() -> None:
    server = make_server(make_gateway(DEMO))
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        for api_key in (None, "wrong-key"):
            response = await conn.get(
                allow_target(tenant="acme", resource="demo", cost="1.5"), api_key=api_key
            )
            assert (response.status, response.json["field"]) == (401, "api_key")
        nursery.cancel_scope.cancel()


async def test_head_on_a_decision_endpoint_is_405_and_charges_nothing() -> None:
    gateway = make_gateway(DEMO)
    server = make_server(gateway)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        response = await conn.request("HEAD", allow_target(tenant="acme", resource="demo"))
        assert response.status == 405
        assert response.headers["allow"] == "GET, POST"
        response = await conn.get(allow_target(tenant="acme", resource="demo"))
        assert response.json["remaining"] == 9
        nursery.cancel_scope.cancel()


async def test_a_missing_tenant_is_reported_as_required() -> None:
    server = make_server(make_gateway(DEMO))
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        response = await conn.get(allow_target(resource="demo"))
        assert response.status == 400
        assert response.json == {"error": "tenant is required", "field": "tenant"}
        nursery.cancel_scope.cancel()
