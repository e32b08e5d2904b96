"""SIGTERM: stop accepting, finish what is in flight within the grace period, exit 0."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable

import pytest
import trio
from e2e_support import API_KEY, HeliosProcess, RawResponse, open_raw, request_bytes

pytestmark = pytest.mark.slow

GRACE_SECONDS = 5.0

POLICIES = """\
[[policies]]
tenant = "*"
resource = "*"
limit = 1000
window = "1s"
"""

DECISION = request_bytes(f"/allow?tenant=load&resource=r&api_key={API_KEY}")


async def wait_for_exit(helios: HeliosProcess, within_seconds: float) -> int:
    try:
        return await trio.to_thread.run_sync(helios.process.wait, within_seconds)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"helios still running {within_seconds} s after the signal") from None


async def assert_refused(helios: HeliosProcess) -> None:
    with pytest.raises(OSError):
        stream = await trio.open_tcp_stream("127.0.0.1", helios.http_port)
        await stream.aclose()


def assert_complete_decision(response: RawResponse) -> None:
    assert response.status in (200, 429), response
    assert int(response.headers["content-length"]) == len(response.body)
    body = response.json()
    assert isinstance(body, dict)
    assert body["tenant"] == "load"
    assert body["allowed"] is (response.status == 200)
    assert response.headers["x-ratelimit-remaining"] == str(body["remaining"])


async def test_sigterm_under_load_gives_only_complete_responses_and_exits_zero(
    helios_factory: Callable[..., HeliosProcess],
) -> None:
    helios = helios_factory(policies=POLICIES)
    complete: list[RawResponse] = []
    connections = 6
    busy = trio.Event()

    async def client() -> None:
        # Keep one keep-alive connection busy until the server ends it. A request
        # can go unanswered when the server closes between two requests; one that
        # gets an answer must get all of it (the reader raises on truncation).
        stream, reader = await open_raw(helios)
        async with stream:
            while True:
                try:
                    await stream.send_all(DECISION)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                response = await reader.response()
                if response is None:
                    return
                assert_complete_decision(response)
                complete.append(response)
                if len(complete) >= 300:
                    busy.set()
                if response.headers.get("connection") == "close":
                    assert await reader.closed()
                    return

    with trio.fail_after(GRACE_SECONDS + 10):
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(client)
            await busy.wait()
            helios.terminate()
            terminated = trio.current_time()
        # Every client task has ended: the server closed each connection.
        code = await wait_for_exit(helios, GRACE_SECONDS + 5)
        elapsed = trio.current_time() - terminated

    assert code == 0, helios.log()
    assert elapsed < GRACE_SECONDS
    assert "Traceback" not in helios.log()
    await assert_refused(helios)


async def test_request_in_flight_is_finished_while_new_connections_are_refused(
    helios_factory: Callable[..., HeliosProcess],
) -> None:
    helios = helios_factory(policies=POLICIES)
    request = request_bytes(f"/allow?tenant=load&resource=r&api_key={API_KEY}")
    stream, reader = await open_raw(helios)
    async with stream:
        # Half a request: in flight when the signal comes.
        await stream.send_all(request[:20])
        await trio.sleep(0.2)  # let the server read it before the signal
        helios.terminate()
        terminated = trio.current_time()

        # The listener closes: new connections are refused while the old one drains.
        with trio.fail_after(GRACE_SECONDS):
            while True:
                try:
                    probe = await trio.open_tcp_stream("127.0.0.1", helios.http_port)
                except OSError:
                    break
                await probe.aclose()
                await trio.sleep(0.02)
        assert helios.process.poll() is None, "exited before the request in flight finished"

        await stream.send_all(request[20:])
        with trio.fail_after(5):
            response = await reader.expect()
            assert response.status == 200
            assert_complete_decision(response)
            assert response.headers["connection"] == "close"
            assert await reader.closed()

    code = await wait_for_exit(helios, GRACE_SECONDS)
    assert code == 0, helios.log()
    assert trio.current_time() - terminated < GRACE_SECONDS


async def test_idle_connections_do_not_hold_shutdown_up(
    helios_factory: Callable[..., HeliosProcess],
) -> None:
    helios = helios_factory(policies=POLICIES)
    streams = []
    for _ in range(3):
        stream, reader = await open_raw(helios)
        await stream.send_all(DECISION)
        with trio.fail_after(5):
            response = await reader.expect()
        assert response.status == 200
        streams.append((stream, reader))

    helios.terminate()
    terminated = trio.current_time()
    code = await wait_for_exit(helios, GRACE_SECONDS)
    elapsed = trio.current_time() - terminated

    assert code == 0, helios.log()
    assert elapsed < 1.5, f"{elapsed:.2f} s to exit with only idle connections open"
    for stream, reader in streams:
        with trio.fail_after(5):
            assert await reader.closed()
        await stream.aclose()
    await assert_refused(helios)


async def test_sigint_stops_it_like_sigterm(helios_factory: Callable[..., HeliosProcess]) -> None:
    helios = helios_factory(policies=POLICIES)
    helios.process.send_signal(signal.SIGINT)
    code = await wait_for_exit(helios, GRACE_SECONDS)
    assert code == 0, helios.log()
    assert "Traceback" not in helios.log()
    await assert_refused(helios)


async def test_stalled_request_is_cut_off_at_the_end_of_the_grace_period(
    helios_factory: Callable[..., HeliosProcess],
) -> None:
    grace = 1.0
    helios = helios_factory(
        policies=POLICIES,
        settings={
            "HELIOS_GATEWAY_SHUTDOWN_GRACE_SECONDS": str(grace),
            "HELIOS_HTTP_REQUEST_TIMEOUT_SECONDS": "30",
        },
    )
    stream, reader = await open_raw(helios)
    async with stream:
        await stream.send_all(DECISION[:20])  # and never the rest
        await trio.sleep(0.2)  # let the server read it before the signal
        helios.terminate()
        terminated = trio.current_time()
        code = await wait_for_exit(helios, grace + 5)
        elapsed = trio.current_time() - terminated
        with trio.fail_after(5):
            await reader.closed()

    assert code == 0, helios.log()
    assert grace - 0.1 <= elapsed < grace + 2
    assert "grace period over" in helios.log()
