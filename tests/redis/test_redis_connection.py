"""RedisConnection against a scripted server on trio's in-memory streams.

These pin down the pipelining and matching rules byte for byte, under a
virtual clock; the tests in ``test_redis_client.py`` check the same against
a real redis-server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import hiredis
import pytest
import trio
import trio.testing

from helios.backends.redis import (
    Address,
    RedisCommandError,
    RedisConnection,
    RedisTimeout,
    RedisUnavailable,
)
from helios.backends.redis.connection import TIMER_RESOLUTION_S


class CountingStream(trio.abc.Stream):
    """A stream that counts its writes."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class FakeServer:
    """The server end: reads commands and answers what the test tells it to."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.reader = hiredis.Reader()
        self.commands: list[list[bytes]] = []

    async def read_commands(self, count: int) -> list[list[bytes]]:
        """Wait until ``count`` more commands have arrived and return them."""
        start = len(self.commands)
        while len(self.commands) < start + count:
            data = await self.stream.receive_some()
            assert data, "the client closed the connection"
            self.reader.feed(bytes(data))
            while (command := self.reader.gets()) is not False:
                self.commands.append(command)
        return self.commands[start:]

    async def reply(self, data: bytes) -> None:
        await self.stream.send_all(data)


@asynccontextmanager
async def connected() -> AsyncIterator[tuple[RedisConnection, FakeServer, CountingStream]]:
    client_end, server_end = trio.testing.memory_stream_pair()
    counting = CountingStream(client_end)
    connection = RedisConnection(counting, Address("fake", 6379))
    async with trio.open_nursery() as nursery:
        await nursery.start(connection.run)
        yield connection, FakeServer(server_end), counting
        connection.close()


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


async def test_concurrent_commands_go_out_in_one_write_and_replies_find_their_callers() -> None:
    async with connected() as (connection, server, stream):
        results: dict[int, bytes] = {}

        async def echo(i: int) -> None:
            results[i] = await connection.execute("ECHO", str(i))

        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(echo, i)
            commands = await server.read_commands(100)
            assert stream.writes == 1
            # Replies split at awkward places: the reader must reassemble them.
            wire = b"".join(bulk(command[1]) for command in commands)
            for start in range(0, len(wire), 7):
                await server.reply(wire[start : start + 7])
        assert results == {i: str(i).encode() for i in range(100)}
        assert connection.pending == 0


async def test_an_abandoned_call_leaves_its_reply_to_be_discarded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected() as (connection, server, _):
        with trio.move_on_after(1) as scope:
            await connection.execute("GET", "slow")
        assert scope.cancelled_caught
        assert connection.pending == 1

        async with trio.open_nursery() as nursery:

            async def fresh() -> None:
                assert await connection.execute("GET", "fresh") == b"fresh value"

            nursery.start_soon(fresh)
            assert await server.read_commands(2) == [[b"GET", b"slow"], [b"GET", b"fresh"]]
            await server.reply(bulk(b"stale value") + bulk(b"fresh value"))
        assert connection.pending == 0


async def test_error_replies_raise_with_their_code() -> None:
    async with connected() as (connection, server, _), trio.open_nursery() as nursery:

        async def wrong_type() -> None:
            with pytest.raises(RedisCommandError) as caught:
                await connection.execute("INCR", "a-list")
            assert caught.value.code == "WRONGTYPE"
            assert caught.value.server_message.startswith("WRONGTYPE Operation")
            assert caught.value.http_status == 503

        nursery.start_soon(wrong_type)
        await server.read_commands(1)
        await server.reply(b"-WRONGTYPE Operation against a key holding the wrong kind\r\n")


async def test_execute_many_keeps_commands_together_and_returns_errors() -> None:
    async with connected() as (connection, server, stream), trio.open_nursery() as nursery:

        async def pipeline() -> None:
            replies = await connection.execute_many([("ASKING",), ("GET", "k")])
            assert replies[0] == b"OK"
            assert isinstance(replies[1], RedisCommandError)
            assert replies[1].code == "TRYAGAIN"

        nursery.start_soon(pipeline)
        assert await server.read_commands(2) == [[b"ASKING"], [b"GET", b"k"]]
        assert stream.writes == 1
        await server.reply(b"+OK\r\n-TRYAGAIN Multiple keys request during rehashing\r\n")


async def test_losing_the_connection_fails_every_pending_call() -> None:
    async with connected() as (connection, server, _):
        failures: list[RedisUnavailable] = []

        async def doomed(i: int) -> None:
            with pytest.raises(RedisUnavailable) as caught:
                await connection.execute("GET", str(i))
            failures.append(caught.value)

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(doomed, i)
            await server.read_commands(10)
            await server.stream.aclose()
        assert len(failures) == 10
        assert "closed the connection" in failures[0].message
        assert connection.broken is not None
        with pytest.raises(RedisUnavailable):
            await connection.execute("PING")


async def test_an_unsolicited_reply_breaks_the_connection() -> None:
    async with connected() as (connection, server, _):
        await server.reply(b"+surprise\r\n")
        await trio.testing.wait_all_tasks_blocked()
        assert connection.broken == "the server sent a reply nobody asked for"


async def test_deadlines_fire_on_time_whatever_the_mix_of_timeouts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # More distinct timeouts than lanes, in an order that keeps no lane sorted
    # for long: some deadlines land in the overflow heap.
    timeouts = [5.0, 0.05, 1.0, 0.02, 3.0, 0.01, 0.5, 2.0, 0.05, 0.2]
    async with connected() as (connection, server, _):
        failed_at: dict[int, float] = {}
        started = trio.current_time()

        async def doomed(i: int, timeout_s: float) -> None:
            with pytest.raises(RedisTimeout):
                await connection.call(("GET", str(i)), started + timeout_s)
            failed_at[i] = trio.current_time() - started

        async with trio.open_nursery() as nursery:
            for i, timeout in enumerate(timeouts):
                nursery.start_soon(doomed, i, timeout)
            await server.read_commands(len(timeouts))
        for i, timeout in enumerate(timeouts):
            assert timeout <= failed_at[i] <= timeout + TIMER_RESOLUTION_S + 1e-9, (i, timeout)

        # The connection is still in step: the late replies are dropped.
        async with trio.open_nursery() as nursery:

            async def fresh() -> None:
                assert await connection.call(("GET", "k"), trio.current_time() + 1) == b"v"

            nursery.start_soon(fresh)
            await server.read_commands(1)
            await server.reply(b"$-1\r\n" * len(timeouts) + bulk(b"v"))
        assert connection.pending == 0
