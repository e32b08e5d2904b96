"""The lean HTTP/1.1 server, in-process over memory streams.

Timeouts run on trio's autojump clock: virtual time jumps to the next
deadline as soon as every task is blocked, so the expected times are exact.
"""

from __future__ import annotations

import json

import trio
import trio.testing

from helios.gateway.http_api import error_body
from helios.server.http import HTTPServer, Limits, Request, Response

from .support import HttpConnection, open_connection, request_bytes


async def echo(request: Request) -> Response:
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    document = {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "body": request.body.decode(),
        "host": (request.header(b"host") or b"").decode(),
    }
    return Response(200, json.dumps(document).encode())


def echo_server(**limits: int | float) -> HTTPServer:
    return HTTPServer(echo, limits=Limits(**limits), error_body=error_body)


async def expect_error_and_close(conn: HttpConnection, status: int, message: str) -> None:
    response = await conn.read_response()
    assert response.status == status
    assert response.json == {"error": message}
    assert response.headers["connection"] == "close"
    assert await conn.closed_by_server()


async def test_pipelined_requests_are_answered_in_order() -> None:
    server = echo_server()
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        await conn.send(
            request_bytes("GET", "/one?x=1")
            + request_bytes("POST", "/two", body=b"payload")
            + request_bytes("GET", "/three")
        )
        answers = [(await conn.read_response()).json for _ in range(3)]
        assert [(a["method"], a["path"], a["query"], a["body"]) for a in answers] == [
            ("GET", "/one", "x=1", ""),
            ("POST", "/two", "", "payload"),
            ("GET", "/three", "", ""),
        ]
        # The connection stays open for more.
        assert (await conn.get("/four")).json["path"] == "/four"
        nursery.cancel_scope.cancel()
    assert server.requests == 4


async def test_request_split_byte_by_byte() -> None:
    server = echo_server()
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        for byte in request_bytes("POST", "/split?a=b", body=b"hello"):
            await conn.send(bytes([byte]))
            await trio.testing.wait_all_tasks_blocked()
        response = await conn.read_response()
        assert response.status == 200
        assert response.json["path"] == "/split"
        assert response.json["query"] == "a=b"
        assert response.json["body"] == "hello"
        assert response.json["host"] == "helios.test"
        nursery.cancel_scope.cancel()


async def test_oversized_request_line_is_414() -> None:
    server = echo_server(max_request_line_bytes=1000)
    async with trio.open_nursery() as nursery:
        ok = open_connection(nursery, server)
        assert (await ok.get("/" + "a" * 900)).status == 200
        conn = open_connection(nursery, server)
        await conn.send(request_bytes("GET", "/" + "a" * 1000))
        await expect_error_and_close(conn, 414, "request line too long")
        nursery.cancel_scope.cancel()


async def test_oversized_request_line_is_refused_before_it_ends() -> None:
    server = echo_server(max_request_line_bytes=1000)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        await conn.send(b"GET /" + b"a" * 2000)
        await expect_error_and_close(conn, 414, "request line too long")
        nursery.cancel_scope.cancel()


async def test_oversized_headers_are_431() -> None:
    server = echo_server(max_header_bytes=1000)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        await conn.send(request_bytes("GET", "/", headers=[("x-big", "a" * 1000)]))
        await expect_error_and_close(conn, 431, "request headers too large")
        nursery.cancel_scope.cancel()


async def test_too_many_headers_are_431() -> None:
    server = echo_server(max_headers=10)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        await conn.send(request_bytes("GET", "/", headers=[(f"x-{i}", "v") for i in range(10)]))
        await expect_error_and_close(conn, 431, "too many request headers")
        nursery.cancel_scope.cancel()


async def test_oversized_body_is_413_as_soon_as_its_length_is_known() -> None:
    server = echo_server(max_body_bytes=1000)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        # Only the head is sent: the declared length alone is enough to refuse.
        await conn.send(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1001\r\n\r\n")
        await expect_error_and_close(conn, 413, "request body larger than 1000 bytes")
        nursery.cancel_scope.cancel()


async def test_oversized_chunked_body_is_413() -> None:
    server = echo_server(max_body_bytes=1000)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        chunk = b"a" * 600
        await conn.send(
            b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"258\r\n"
            + chunk
            + b"\r\n"
            + b"258\r\n"
            + chunk
            + b"\r\n0\r\n\r\n"
        )
        await expect_error_and_close(conn, 413, "request body larger than 1000 bytes")
        nursery.cancel_scope.cancel()


async def test_body_at_the_limit_is_accepted() -> None:
    server = echo_server(max_body_bytes=1000)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        response = await conn.request("POST", "/", body=b"b" * 1000)
        assert (response.status, len(response.json["body"])) == (200, 1000)
        nursery.cancel_scope.cancel()


async def test_malformed_request_line_is_400_and_closes_only_that_connection() -> None:
    server = echo_server()
    async with trio.open_nursery() as nursery:
        good = open_connection(nursery, server)
        assert (await good.get("/before")).status == 200
        for garbage in (
            b"NOT HTTP AT ALL\r\n\r\n",
            b"GET / HTTP/9\r\n\r\n",
            b"\x00\x01\x02\r\n\r\n",
        ):
            bad = open_connection(nursery, server)
            await bad.send(garbage)
            response = await bad.read_response()
            assert response.status == 400
            assert response.json["error"].startswith("malformed HTTP request")
            assert response.headers["connection"] == "close"
            assert await bad.closed_by_server()
        assert (await good.get("/after")).status == 200
        nursery.cancel_scope.cancel()
    assert server.bad_requests == 3


async def test_bad_request_after_a_good_one_in_the_same_send() -> None:
    server = echo_server()
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        await conn.send(request_bytes("GET", "/first") + b"BROKEN\r\n\r\n")
        assert (await conn.read_response()).json["path"] == "/first"
        response = await conn.read_response()
        assert response.status == 400
        assert await conn.closed_by_server()
        nursery.cancel_scope.cancel()


async def test_handler_failure_is_500_and_the_server_keeps_serving() -> None:
    server = echo_server()
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        await expect_error_and_close_after(conn)
        other = open_connection(nursery, server)
        assert (await other.get("/fine")).status == 200
        nursery.cancel_scope.cancel()


async def expect_error_and_close_after(conn: HttpConnection) -> None:
    await conn.send(request_bytes("GET", "/boom"))
    await expect_error_and_close(conn, 500, "internal error")


async def test_connection_close_and_http_1_0_close_after_the_answer() -> None:
    server = echo_server()
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        response = await conn.get("/", headers=[("connection", "close")])
        assert (response.status, response.headers["connection"]) == (200, "close")
        assert await conn.closed_by_server()

        old = open_connection(nursery, server)
        await old.send(b"GET /old HTTP/1.0\r\n\r\n")
        response = await old.read_response()
        assert (response.status, response.headers["connection"]) == (200, "close")
        assert await old.closed_by_server()
        nursery.cancel_scope.cancel()


async def test_half_a_request_gets_408_after_the_request_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = echo_server(request_timeout_seconds=10, idle_timeout_seconds=60)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        await conn.send(b"GET /slow HTTP/1.1\r\nhost: x\r\n")
        await expect_error_and_close(conn, 408, "request not received in time")
        assert trio.current_time() == 10.0
        nursery.cancel_scope.cancel()


async def test_trickling_request_gets_408_counted_from_its_first_byte(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = echo_server(request_timeout_seconds=10, idle_timeout_seconds=60)

    async def trickle(conn: HttpConnection) -> None:
        # One byte every 4 s: each chunk arrives well within any per-read timeout.
        for byte in b"GET /slowly HTTP/1.1\r\n":
            await conn.send(bytes([byte]))
            await trio.sleep(4)

    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        nursery.start_soon(trickle, conn)
        response = await conn.read_response()
        assert (response.status, trio.current_time()) == (408, 10.0)
        assert response.headers["connection"] == "close"
        assert await conn.closed_by_server()
        nursery.cancel_scope.cancel()


async def test_request_timeout_starts_when_the_request_begins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = echo_server(request_timeout_seconds=10, idle_timeout_seconds=60)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        assert (await conn.get("/first")).status == 200
        await trio.sleep(55)
        await conn.send(b"GET /second HTTP/1.1\r\n")
        await expect_error_and_close(conn, 408, "request not received in time")
        assert trio.current_time() == 65.0
        nursery.cancel_scope.cancel()


async def test_idle_keep_alive_connection_closes_after_the_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = echo_server(request_timeout_seconds=10, idle_timeout_seconds=60)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        await trio.sleep(30)
        assert (await conn.get("/")).status == 200
        # Idle from t = 30: closed, without a response, 60 s later. After an
        # answered request the deadline moves in steps of up to a second (a
        # tenth of the idle timeout here), so it may be up to 1 s later.
        assert await conn.closed_by_server()
        assert 90.0 <= trio.current_time() <= 91.0

        # A connection that never sends anything: closed exactly 60 s after it opened.
        opened = trio.current_time()
        silent = open_connection(nursery, server)
        assert await silent.closed_by_server()
        assert trio.current_time() == opened + 60.0
        nursery.cancel_scope.cancel()
    assert server.connections == 0


async def test_head_gets_headers_without_a_body() -> None:
    server = echo_server()
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        response = await conn.request("HEAD", "/")
        assert response.status == 200
        assert response.body == b""
        assert (await conn.get("/next")).json["path"] == "/next"
        nursery.cancel_scope.cancel()
