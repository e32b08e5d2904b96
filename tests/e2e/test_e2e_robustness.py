"""Bad and slow clients against the real process, while a good client keeps being served.

The process runs with a request timeout and an idle timeout of one second, so
the tests can watch both expire.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from e2e_support import (
    API_KEY,
    HeliosProcess,
    bystander,
    open_raw,
    request_bytes,
    running_helios,
)

pytestmark = pytest.mark.slow

TIMEOUT_SECONDS = 1.0
# How far a measured timeout may stray from the configured one on a busy machine.
EARLY_SLACK_SECONDS = 0.15
LATE_SLACK_SECONDS = 2.0

POLICIES = """\
[[policies]]
tenant = "*"
resource = "*"
limit = 1000000
window = "1s"

[[policies]]
tenant = "pipe"
resource = "r"
limit = 10
window = "1h"
"""

GOOD = f"/allow?tenant=bystander&resource=r&api_key={API_KEY}"


@pytest.fixture(scope="module")
def helios(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeliosProcess]:
    directory: Path = tmp_path_factory.mktemp("robustness")
    settings = {
        "HELIOS_HTTP_REQUEST_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
        "HELIOS_HTTP_IDLE_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
    }
    with running_helios(directory, policies=POLICIES, settings=settings) as process:
        yield process


def assert_about_timeout(elapsed: float) -> None:
    assert TIMEOUT_SECONDS - EARLY_SLACK_SECONDS <= elapsed <= TIMEOUT_SECONDS + LATE_SLACK_SECONDS


@pytest.mark.parametrize(
    "garbage",
    [
        b"GARBAGE\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /allow HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /allow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=[
        "request-line",
        "binary",
        "header-without-colon",
        "bad-content-length",
        "content-length-and-chunked",
        "bad-chunk-size",
    ],
)
async def test_malformed_http_gets_400_and_close(helios: HeliosProcess, garbage: bytes) -> None:
    async with bystander(helios, GOOD) as good:
        stream, reader = await open_raw(helios)
        async with stream:
            await stream.send_all(garbage)
            with trio.fail_after(5):
                response = await reader.expect()
                assert response.status == 400
                assert isinstance(response.json()["error"], str)
                assert response.headers["connection"] == "close"
                assert await reader.closed()
        await good.served_during(3)


async def test_oversized_headers_get_431_and_close(helios: HeliosProcess) -> None:
    async with bystander(helios, GOOD) as good:
        for headers in (
            f"X-Padding: {'a' * 20_000}\r\n",
            "".join(f"X-Header-{index}: {index}\r\n" for index in range(150)),
        ):
            stream, reader = await open_raw(helios)
            async with stream:
                await stream.send_all(request_bytes(GOOD, headers=headers))
                with trio.fail_after(5):
                    response = await reader.expect()
                    assert response.status == 431
                    assert response.headers["connection"] == "close"
                    assert await reader.closed()
        await good.served_during(3)


async def test_header_growing_past_the_limit_gets_431_before_it_ends(
    helios: HeliosProcess,
) -> None:
    # 30 KB of one header's value, never terminated: past what a request head
    # may hold (8 KB request line + 16 KB of headers by default).
    stream, reader = await open_raw(helios)
    async with stream:
        await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 30_000)
        with trio.fail_after(5):
            response = await reader.expect()
    assert response.status == 431


async def test_stalled_request_gets_408_after_the_request_timeout(helios: HeliosProcess) -> None:
    async with bystander(helios, GOOD) as good:
        stream, reader = await open_raw(helios)
        async with stream:
            await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            started = trio.current_time()
            answered_before = good.answered
            with trio.fail_after(TIMEOUT_SECONDS + 5):
                response = await reader.expect()
                elapsed = trio.current_time() - started
                assert response.status == 408
                assert response.headers["connection"] == "close"
                assert await reader.closed()
        assert_about_timeout(elapsed)
        # While the stalled client held its connection, the good one kept getting answers.
        assert good.answered - answered_before >= 10
        await good.served_during(3)


async def test_trickling_request_gets_408_after_the_request_timeout(helios: HeliosProcess) -> None:
    # The timeout runs from the request's first byte: sending slowly does not extend it.
    request = request_bytes(GOOD)
    async with bystander(helios, GOOD) as good:
        stream, reader = await open_raw(helios)
        async with stream, trio.open_nursery() as nursery:

            async def trickle() -> None:
                for index in range(len(request) - 4):
                    await stream.send_all(request[index : index + 1])
                    await trio.sleep(0.05)  # the slow client's deliberate pace

            started = trio.current_time()
            nursery.start_soon(trickle)
            with trio.fail_after(TIMEOUT_SECONDS + 5):
                response = await reader.expect()
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
        assert response.status == 408
        assert_about_timeout(elapsed)
        await good.served_during(3)


async def test_pipelined_requests_are_answered_in_order(helios: HeliosProcess) -> None:
    key = f"X-API-Key: {API_KEY}\r\n"
    pipeline = b"".join(
        (
            request_bytes("/health"),
            request_bytes("/allow?tenant=pipe&resource=r&cost=2", headers=key),
            request_bytes("/no/such/route"),
            request_bytes("/allow?tenant=pipe&resource=r&cost=3", headers=key),
            request_bytes(
                "/api/v1/allow",
                method="POST",
                headers=key + "Content-Type: application/json\r\n",
                body=b'{"tenant": "pipe", "resource": "r", "cost": 1}',
            ),
            request_bytes("/ready", headers="Connection: close\r\n"),
        )
    )
    async with bystander(helios, GOOD) as good:
        stream, reader = await open_raw(helios)
        async with stream:
            await stream.send_all(pipeline)
            with trio.fail_after(5):
                responses = [await reader.expect() for _ in range(6)]
                assert await reader.closed()
        await good.served_during(3)

    statuses = [response.status for response in responses]
    assert statuses == [200, 200, 404, 200, 200, 200]
    bodies = [response.json() for response in responses]
    assert bodies[0]["status"] == "ok"
    assert [bodies[index]["remaining"] for index in (1, 3, 4)] == [8, 5, 4]
    assert bodies[5]["status"] == "ready"
    assert responses[5].headers["connection"] == "close"
    assert all("connection" not in response.headers for response in responses[:5])


async def test_pipelined_good_then_malformed_answers_both_and_closes(
    helios: HeliosProcess,
) -> None:
    stream, reader = await open_raw(helios)
    async with stream:
        await stream.send_all(request_bytes("/health") + b"GARBAGE\r\n\r\n")
        with trio.fail_after(5):
            first = await reader.expect()
            second = await reader.expect()
            assert await reader.closed()
    assert first.status == 200
    assert second.status == 400


async def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    helios: HeliosProcess,
) -> None:
    async with bystander(helios, GOOD) as good:
        stream, reader = await open_raw(helios)
        async with stream:
            await stream.send_all(request_bytes("/health"))
            with trio.fail_after(TIMEOUT_SECONDS + 5):
                response = await reader.expect()
                assert response.status == 200
                assert "connection" not in response.headers
                started = trio.current_time()
                assert await reader.closed()
            elapsed = trio.current_time() - started
        assert_about_timeout(elapsed)
        await good.served_during(3)


async def test_blank_lines_do_not_hold_a_connection_past_the_idle_timeout(
    helios: HeliosProcess,
) -> None:
    stream, reader = await open_raw(helios)
    limit = TIMEOUT_SECONDS + LATE_SLACK_SECONDS
    async with stream:
        started = trio.current_time()
        with trio.move_on_after(limit + 0.5):
            async with trio.open_nursery() as nursery:

                async def poke() -> None:
                    while True:
                        try:
                            await stream.send_all(b"\r\n")
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            return
                        await trio.sleep(TIMEOUT_SECONDS / 4)  # the client's deliberate pace

                nursery.start_soon(poke)
                await reader.closed()
                nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - started
    assert elapsed <= limit, f"connection still open after {elapsed:.1f} s of blank lines"


async def test_connection_kept_busy_is_not_closed_by_the_idle_timeout(
    helios: HeliosProcess,
) -> None:
    # Requests spaced under the idle timeout keep one connection open well past it.
    stream, reader = await open_raw(helios)
    async with stream:
        for _ in range(4):
            await stream.send_all(request_bytes("/health"))
            with trio.fail_after(5):
                response = await reader.expect()
            assert response.status == 200
            await trio.sleep(TIMEOUT_SECONDS / 2)  # the client's deliberate pace
