"""Hostile or careless input gets a clear 4xx, charges nothing, and is counted."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from helios.config import load_config
from helios.errors import ConfigError
from helios.gateway.http_api import HttpApi
from helios.gateway.metrics import GatewayMetrics
from helios.server.http import HTTPServer
from helios.store.policy_file import parse_policies
from unit.support import (
    API_KEY,
    HttpConnection,
    HttpResponse,
    allow_target,
    make_gateway,
    make_server,
    open_connection,
    request_bytes,
)

DEMO = {"tenant": "acme", "resource": "*", "limit": 10, "window": "1m"}
QUOTA = "/api/v1/quota/acme?resource=demo"


async def remaining(conn: object) -> int:
    response = await conn.get(QUOTA)  # type: ignore[attr-defined]
    return int(response.json["remaining"])


async def test_a_lone_surrogate_in_a_name_is_a_400_and_charges_nothing() -> None:
    server = make_server(make_gateway(DEMO))
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        body = b'{"tenant": "\\ud800", "resource": "demo"}'
        await conn.send(request_bytes("POST", "/api/v1/allow", body=body))
        response = await conn.read_response()
        assert (response.status, response.json["field"]) == (400, "tenant")

        body = (
            b'{"checks": [{"tenant": "acme", "resource": "demo", "cost": 3},'
            b' {"tenant": "acme", "resource": "\\udfff"}]}'
        )
        await conn.send(request_bytes("POST", "/api/v1/allow/batch", body=body))
        response = await conn.read_response()
        assert response.status == 200
        first, second = response.json["results"]
        assert (first["status"], first["remaining"]) == (200, 7)
        assert (second["status"], second["field"]) == (400, "resource")
        assert await remaining(conn) == 7
        nursery.cancel_scope.cancel()


async def test_deeply_nested_json_is_a_400() -> None:
    server = make_server(make_gateway(DEMO))
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        body = b"[" * 5000 + b"]" * 5000
        await conn.send(request_bytes("POST", "/api/v1/allow", body=body))
        response = await conn.read_response()
        assert (response.status, response.json["field"]) == (400, "body")
        nursery.cancel_scope.cancel()


async def test_an_internal_error_is_a_500_that_metrics_count() -> None:
    gateway = make_gateway(DEMO)

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    gateway.decide = broken  # type: ignore[method-assign,assignment]
    metrics = GatewayMetrics()
    server = HTTPServer(HttpApi(gateway, metrics, max_batch_checks=10))
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        response = await conn.get(allow_target(tenant="acme", resource="demo"))
        assert response.status == 500
        assert response.json == {"error": "internal error"}
        # The connection stays usable.
        assert (await conn.get("/health")).status == 200
        nursery.cancel_scope.cancel()
    assert metrics.requests[("/allow", 500)] == 1


async def test_an_upgrade_request_gets_one_400_and_is_not_decided() -> None:
    server = make_server(make_gateway(DEMO))
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        await conn.send(
            request_bytes(
                "GET",
                allow_target(tenant="acme", resource="demo"),
                headers=[("connection", "Upgrade"), ("upgrade", "websocket")],
            )
        )
        response = await conn.read_response()
        assert response.status == 400
        assert "upgrade" in response.json["error"]
        assert await conn.closed_by_server()
        checker = open_connection(nursery, server)
        assert await remaining(checker) == 10
        nursery.cancel_scope.cancel()


async def test_expect_100_continue_is_answered_before_the_body() -> None:
    server = make_server(make_gateway(DEMO))
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        body = b'{"tenant": "acme", "resource": "demo"}'
        head = request_bytes(
            "POST",
            "/api/v1/allow",
            body=body,
            headers=[("expect", "100-continue")],
        )[: -len(body)]
        await conn.send(head)
        interim = await conn.read_response(head=True)
        assert interim.status == 100
        await conn.send(body)
        response = await conn.read_response()
        assert (response.status, response.json["remaining"]) == (200, 9)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "headers, query",
    [
        ([("x-api-key", f" {API_KEY}\t")], ""),
        ([("x-api-key", ""), ("authorization", f"Bearer {API_KEY}")], ""),
        ([("authorization", "Bearer  ")], f"&api_key={API_KEY}"),
        ([("authorization", f"bearer {API_KEY} ")], ""),
    ],
)
async def test_api_keys_are_found_whatever_the_whitespace(
    headers: list[tuple[str, str]], query: str
) -> None:
    server = make_server(make_gateway(DEMO))
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        target = allow_target(tenant="acme", resource="demo") + query
        await conn.send(request_bytes("GET", target, headers=headers, api_key=None))
        assert (await conn.read_response()).status == 200
        nursery.cancel_scope.cancel()


def test_a_deeply_nested_policy_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="too deeply"):
        parse_policies("x = " + "[" * 3000 + "]" * 3000, "p.toml")


@pytest.mark.parametrize(
    "text, setting",
    [
        ('[http]\nport = "8080"\n', "http.port"),
        ('[gateway]\nallowed_api_keys = "k1,k2"\n', "gateway.allowed_api_keys"),
        ('[gateway]\nauth_disabled = "false"\n', "gateway.auth_disabled"),
        ("[gateway]\nshutdown_grace_seconds = inf\n", "gateway.shutdown_grace_seconds"),
    ],
)
def test_config_file_values_must_have_their_type(tmp_path: Path, text: str, setting: str) -> None:
    path = tmp_path / "helios.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        load_config(str(path), {}, {})


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "helios.toml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(str(path), {}, {})


def test_an_alias_and_its_canonical_name_may_not_disagree() -> None:
    environ = {"HELIOS_ALLOWED_API_KEYS": "a", "HELIOS_GATEWAY_ALLOWED_API_KEYS": "b"}
    with pytest.raises(ConfigError, match="HELIOS_ALLOWED_API_KEYS"):
        load_config(None, environ, {})
    same = {"HELIOS_ALLOWED_API_KEYS": "a", "HELIOS_GATEWAY_ALLOWED_API_KEYS": "a"}
    assert load_config(None, same, {}).gateway.allowed_api_keys == ["a"]


def test_a_mistyped_set_flag_never_repeats_its_value(capsys: pytest.CaptureFixture[str]) -> None:
    from helios.cli import main

    assert main(["--set", "gateway.allowed_api_key=s3cret-value"]) == 2
    assert "s3cret-value" not in capsys.readouterr().err


async def _answer(conn: HttpConnection, data: bytes) -> HttpResponse:
    await conn.send(data)
    return await conn.read_response()


@pytest.mark.parametrize(
    "body, field",
    [
        # A misspelt field would otherwise be ignored, charging the default cost.
        (b'{"tenant": "acme", "resource": "demo", "costs": 5}', "costs"),
        (b'{"tenant": "acme", "resource": "demo", "cost": 1, "cost": 5}', "cost"),
        (b'{"tenant": "acme", "tenant": "beta", "resource": "demo"}', "tenant"),
        (b'{"tenant": "acme", "resource": "demo", "cost": 1' + b"0" * 5000 + b"}", "body"),
    ],
)
async def test_a_json_check_with_unknown_or_repeated_fields_is_a_400_naming_them(
    body: bytes, field: str
) -> None:
    server = make_server(make_gateway(DEMO))
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        response = await _answer(conn, request_bytes("POST", "/api/v1/allow", body=body))
        assert (response.status, response.json["field"]) == (400, field)
        assert await remaining(conn) == 10
        nursery.cancel_scope.cancel()


async def test_in_a_batch_an_unknown_field_answers_only_its_check() -> None:
    server = make_server(make_gateway(DEMO))
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        body = (
            b'{"checks": [{"tenant": "acme", "resource": "demo", "cost": 3},'
            b' {"tenant": "acme", "resource": "demo", "kost": 2},'
            b' {"tenant": "acme", "resource": null}]}'
        )
        response = await _answer(conn, request_bytes("POST", "/api/v1/allow/batch", body=body))
        first, second, third = response.json["results"]
        assert (first["status"], first["remaining"]) == (200, 7)
        assert (second["status"], second["field"]) == (400, "checks[1].kost")
        # null is a field left out: the resource "default".
        assert (third["status"], third["resource"], third["remaining"]) == (200, "default", 9)
        response = await _answer(
            conn, request_bytes("POST", "/api/v1/allow/batch", body=b'{"checks": [], "x": 1}')
        )
        assert (response.status, response.json["field"]) == (400, "x")
        assert await remaining(conn) == 7
        nursery.cancel_scope.cancel()


async def test_a_key_header_sent_twice_with_different_keys_is_refused() -> None:
    server = make_server(make_gateway(DEMO))
    target = allow_target(tenant="acme", resource="demo")
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        for name, value in (("x-api-key", "other-key"), ("authorization", "Bearer other-key")):
            first = API_KEY if name == "x-api-key" else f"Bearer {API_KEY}"
            for headers in ([(name, first), (name, value)], [(name, value), (name, first)]):
                data = request_bytes("GET", target, headers=headers, api_key=None)
                response = await _answer(conn, data)
                assert response.status == 401
                assert response.json == {
                    "error": "the API key is given more than once",
                    "field": "api_key",
                }
            # The same key twice says one thing.
            data = request_bytes(
                "GET", target, headers=[(name, first), (name, first)], api_key=None
            )
            assert (await _answer(conn, data)).status == 200
        # X-API-Key wins over a Bearer token, which a proxy may pass on for another service.
        headers = [("authorization", "Bearer other-key"), ("x-api-key", API_KEY)]
        data = request_bytes("GET", target, headers=headers, api_key=None)
        assert (await _answer(conn, data)).status == 200
        assert await remaining(conn) == 7
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "request_line, headers, status",
    [
        ("GET /health HTTP/2.0", [], 505),
        ("GET /health HTTP/1.1", [("expect", "something-else")], 417),
    ],
)
async def test_a_version_or_expectation_the_server_cannot_meet_is_refused(
    request_line: str, headers: list[tuple[str, str]], status: int
) -> None:
    server = make_server(make_gateway(DEMO))
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        lines = [request_line, "host: helios.test", *(f"{n}: {v}" for n, v in headers)]
        response = await _answer(conn, ("\r\n".join(lines) + "\r\n\r\n").encode())
        assert response.status == status
        assert await conn.closed_by_server()
        nursery.cancel_scope.cancel()


async def test_a_tenant_in_the_quota_path_with_a_broken_escape_is_a_400() -> None:
    server = make_server(make_gateway(DEMO))
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        response = await conn.get("/api/v1/quota/%ZZ?resource=demo")
        assert (response.status, response.json["field"]) == (400, "tenant")
        assert (await conn.get("/api/v1/quota/%61cme?resource=demo")).status == 200
        nursery.cancel_scope.cancel()
