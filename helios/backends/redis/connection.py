"""One pipelined connection to one Redis server.

How it works: callers never touch the socket. A call encodes its command,
appends it to an outbox and a waiter to a FIFO, then parks. A single writer
task sends everything the outbox holds in one ``send_all`` (so the commands of
concurrent callers travel together: pipelining), and a single reader task
feeds whatever arrives to ``hiredis.Reader`` and hands each reply to the
oldest waiter. Redis answers in order, so FIFO order is the whole matching
rule.

A caller that gives up (its deadline passed, or it was cancelled) leaves its
waiter in the FIFO, marked abandoned: the reply still comes, and is dropped,
so every later reply still finds its own caller. When the connection breaks,
every waiter fails with :class:`RedisUnavailable` and the connection stays
broken; the pool opens a new one.

Deadlines are kept here rather than with a ``trio.CancelScope`` per call: a
cancel scope costs about 6 µs to enter and leave, as much as the rest of a
call, while appending to a queue costs a fraction of a microsecond. Calls
with the same timeout arrive in deadline order, so each queue ("lane") stays
sorted by itself: a call joins the first lane whose last deadline is not
later than its own. A few lanes serve a few distinct timeouts; the rare call
that fits none goes to a heap. A third task, the timer, wakes at the earliest
deadline (at most once per millisecond, so a steady stream of calls does not
wake it for each one) and fails the callers whose deadline passed with
:class:`RedisTimeout`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import hiredis
import outcome
import trio

from helios.backends.redis.errors import RedisCommandError, RedisTimeout, RedisUnavailable
from helios.backends.redis.protocol import (
    Address,
    CommandArg,
    Reply,
    encode_command,
)

log = logging.getLogger("helios.redis")

# Enough for a few hundred small replies per read; bigger replies take several reads.
_RECEIVE_BYTES = 64 * 1024

# What hiredis.Reader.gets() returns while no whole reply has arrived yet. A
# unique object, because False could be mistaken for a reply.
_INCOMPLETE = object()

# Lanes of deadlines per connection; more distinct timeouts go to the heap.
_MAX_LANES = 4

# How late a deadline may fire. Bounds the timer's wake-ups to 1,000 a second
# however many calls are in flight.
TIMER_RESOLUTION_S = 0.001


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """How to open and set up a connection: credentials, database and TLS."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    #: ``None``: plain TCP; otherwise TLS with this context.
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)


class _Waiter:
    """The caller of one command, or of a pipeline of ``count`` commands.

    ``task`` is ``None`` once the caller has been answered or has given up.
    ``replies`` collects a pipeline's replies; a single command has none.
    """

    __slots__ = ("count", "deadline", "replies", "task")

    def __init__(self, task: trio.lowlevel.Task, pipeline_length: int = 0) -> None:
        self.task: trio.lowlevel.Task | None = task
        self.deadline = math.inf
        self.count = pipeline_length
        self.replies: list[Reply] | None = [] if pipeline_length else None

    def abandon(self, raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        # The reply is still on its way and must still be consumed in order.
        self.task = None
        return trio.lowlevel.Abort.SUCCEEDED


class RedisConnection:
    """One TCP or TLS connection, shared by any number of concurrent callers.

    Create it with :func:`open_connection`, which also authenticates and selects
    the database. Calls raise :class:`RedisCommandError` for an error reply,
    :class:`RedisTimeout` when their deadline (``trio.current_time()`` based)
    passes, and :class:`RedisUnavailable` once the connection is broken.
    """

    def __init__(self, stream: trio.abc.Stream, address: Address) -> None:
        self.address = address
        self._stream = stream
        self._reader = hiredis.Reader(notEnoughData=_INCOMPLETE)
        self._outbox: list[bytes] = []
        self._waiters: deque[_Waiter] = deque()
        self._outbox_ready = trio.Event()
        self._cancel_scope = trio.CancelScope()
        # Waiters with a deadline, each lane sorted by deadline, and the heap of
        # (deadline, sequence number, waiter) for the rest. Answered waiters
        # stay until their deadline, when the timer drops them.
        self._lanes: list[deque[_Waiter]] = []
        self._overflow: list[tuple[float, int, _Waiter]] = []
        self._sequence = itertools.count()
        # The timer sleeps in this scope; its deadline is the next wake-up,
        # mirrored in _wake_at because reading a scope's deadline is slower.
        self._timer = trio.CancelScope()
        self._wake_at = math.inf
        #: Why the connection cannot be used any more; ``None`` while it can.
        self.broken: str | None = None
        #: Commands sent since the connection opened.
        self.calls = 0

    def __repr__(self) -> str:
        state = "open" if self.broken is None else f"broken: {self.broken}"
        return f"<RedisConnection {self.address} {state}, {len(self._waiters)} pending>"

    @property
    def pending(self) -> int:
        """Replies still expected, including those of callers that gave up."""
        return len(self._waiters)

    async def execute(self, *args: CommandArg) -> Reply:
        """Send one command and return its reply; no deadline."""
        return await self.call(args)

    async def call(self, command: tuple[CommandArg, ...], deadline: float = math.inf) -> Reply:
        """Send one command and return its reply, or fail at ``deadline``."""
        if self.broken is not None:
            raise RedisUnavailable(
                f"connection to redis at {self.address} is broken: {self.broken}"
            )
        self._send(encode_command(command))
        waiter = _Waiter(trio.lowlevel.current_task())
        self._waiters.append(waiter)
        if deadline != math.inf:
            self._add_deadline(deadline, waiter)
        reply = await trio.lowlevel.wait_task_rescheduled(waiter.abandon)
        if type(reply) is hiredis.ReplyError:
            raise RedisCommandError(str(reply))
        return reply

    async def execute_many(
        self, commands: Sequence[tuple[CommandArg, ...]], deadline: float = math.inf
    ) -> list[Reply | RedisCommandError]:
        """Send several commands back to back and return their replies in order.

        Nothing else is sent on this connection between them (``ASKING`` must
        immediately precede its command). Error replies are returned as
        :class:`RedisCommandError` instances, not raised, so the caller sees
        which command failed.
        """
        if self.broken is not None:
            raise RedisUnavailable(
                f"connection to redis at {self.address} is broken: {self.broken}"
            )
        if not commands:
            return []
        self._send(b"".join(encode_command(command) for command in commands), len(commands))
        waiter = _Waiter(trio.lowlevel.current_task(), len(commands))
        # One entry per expected reply; the reader answers after the last one.
        self._waiters.extend([waiter] * len(commands))
        if deadline != math.inf:
            self._add_deadline(deadline, waiter)
        replies: list[Reply] = await trio.lowlevel.wait_task_rescheduled(waiter.abandon)
        return [
            RedisCommandError(str(reply)) if type(reply) is hiredis.ReplyError else reply
            for reply in replies
        ]

    def close(self) -> None:
        """Fail every pending call and stop using the connection."""
        self._fail("the client closed the connection")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the writer, the reader and the timer until the connection breaks or closes.

        Returns, rather than raises, when the connection is lost: the reason is
        in ``broken`` and every pending caller has been told.
        """
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop)
                    nursery.start_soon(self._read_loop)
                    nursery.start_soon(self._timer_loop)
                    task_status.started()
        finally:
            self._fail("the connection was closed")
            await trio.aclose_forcefully(self._stream)

    def _send(self, data: bytes, commands: int = 1) -> None:
        self._outbox.append(data)
        self.calls += commands
        if len(self._outbox) == 1:
            self._outbox_ready.set()

    def _add_deadline(self, deadline: float, waiter: _Waiter) -> None:
        waiter.deadline = deadline
        for lane in self._lanes:
            if not lane or lane[-1].deadline <= deadline:
                lane.append(waiter)
                break
        else:
            if len(self._lanes) < _MAX_LANES:
                self._lanes.append(deque([waiter]))
            else:
                heapq.heappush(self._overflow, (deadline, next(self._sequence), waiter))
        # Calls with equal timeouts come in deadline order, so this is rare:
        # the first call after a quiet spell, or a shorter timeout than usual.
        if deadline + TIMER_RESOLUTION_S < self._wake_at:
            self._wake_at = self._timer.deadline = deadline

    async def _timer_loop(self) -> None:
        overflow = self._overflow
        while True:
            with self._timer:
                await trio.sleep_forever()
            now = trio.current_time()
            earliest = math.inf
            for lane in self._lanes:
                while lane and lane[0].deadline <= now:
                    self._expire(lane.popleft())
                if lane:
                    earliest = min(earliest, lane[0].deadline)
            while overflow and overflow[0][0] <= now:
                self._expire(heapq.heappop(overflow)[2])
            if overflow:
                earliest = min(earliest, overflow[0][0])
            self._wake_at = max(earliest, now + TIMER_RESOLUTION_S)
            self._timer = trio.CancelScope(deadline=self._wake_at)

    def _expire(self, waiter: _Waiter) -> None:
        task, waiter.task = waiter.task, None
        if task is not None:
            error = RedisTimeout(f"redis at {self.address} did not answer in time")
            trio.lowlevel.reschedule(task, outcome.Error(error))

    async def _write_loop(self) -> None:
        outbox = self._outbox
        try:
            while True:
                if not outbox:
                    self._outbox_ready = trio.Event()
                    await self._outbox_ready.wait()
                    continue
                # Everything queued while the previous send was in progress goes
                # out in one write.
                data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
                outbox.clear()
                await self._stream.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as error:
            self._fail(f"writing failed: {describe(error)}")

    async def _read_loop(self) -> None:
        reader = self._reader
        waiters = self._waiters
        reschedule = trio.lowlevel.reschedule
        try:
            while True:
                data = await self._stream.receive_some(_RECEIVE_BYTES)
                if not data:
                    self._fail("the server closed the connection")
                    return
                # receive_some() may return a bytearray, which hiredis reads as well.
                reader.feed(data)  # type: ignore[arg-type]
                while (reply := reader.gets()) is not _INCOMPLETE:
                    if not waiters:
                        self._fail("the server sent a reply nobody asked for")
                        return
                    waiter = waiters.popleft()
                    if waiter.replies is not None:
                        waiter.replies.append(reply)
                        if len(waiter.replies) < waiter.count:
                            continue
                        reply = waiter.replies
                    task = waiter.task
                    if task is not None:
                        waiter.task = None
                        reschedule(task, outcome.Value(reply))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as error:
            self._fail(f"reading failed: {describe(error)}")
        except hiredis.ProtocolError as error:
            self._fail(f"the server broke the protocol: {error}")

    def _fail(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason
            log.debug("redis.connection.broken %s: %s", self.address, reason)
        self._outbox.clear()
        self._lanes.clear()
        self._overflow.clear()
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            task, waiter.task = waiter.task, None
            if task is not None:
                error = RedisUnavailable(
                    f"lost the connection to redis at {self.address}: {reason}"
                )
                trio.lowlevel.reschedule(task, outcome.Error(error))
        self._cancel_scope.cancel()


def describe(error: BaseException) -> str:
    """What went wrong, for a message: trio's stream errors keep the reason in their cause."""
    return str(error) or (str(error.__cause__) if error.__cause__ else "") or type(error).__name__


async def open_connection(
    address: Address,
    settings: ConnectionSettings,
    nursery: trio.Nursery,
    *,
    timeout_ms: float,
) -> RedisConnection:
    """Connect, authenticate and select the database; the connection's tasks run in ``nursery``.

    Raises :class:`RedisTimeout` when all that takes longer than ``timeout_ms``,
    and :class:`RedisUnavailable` when it fails.
    """
    with trio.move_on_after(timeout_ms / 1000):
        try:
            return await _connect(address, settings, nursery)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as error:
            raise RedisUnavailable(
                f"cannot connect to redis at {address}: {describe(error)}"
            ) from None
    raise RedisTimeout(f"connecting to redis at {address} took longer than {timeout_ms:g} ms")


async def open_stream(address: Address, settings: ConnectionSettings) -> trio.abc.Stream:
    """A TCP stream to ``address``, or a TLS stream whose handshake is done."""
    if settings.ssl_context is None:
        return await trio.open_tcp_stream(address.host, address.port)
    tls = await trio.open_ssl_over_tcp_stream(
        address.host, address.port, ssl_context=settings.ssl_context
    )
    try:
        # Handshake now, so that a certificate problem is a connect error.
        await tls.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(tls)
        raise
    return tls


def setup_commands(settings: ConnectionSettings) -> list[tuple[CommandArg, ...]]:
    """The commands that set up a new connection: AUTH, then SELECT."""
    setup: list[tuple[CommandArg, ...]] = []
    if settings.password is not None:
        if settings.username is not None:
            setup.append(("AUTH", settings.username, settings.password))
        else:
            setup.append(("AUTH", settings.password))
    if settings.db:
        setup.append(("SELECT", settings.db))
    return setup


def check_setup(
    address: Address, setup: list[tuple[CommandArg, ...]], replies: Sequence[Reply]
) -> None:
    """Raise :class:`RedisUnavailable` if the server refused a setup command."""
    for command, reply in zip(setup, replies, strict=True):
        if isinstance(reply, RedisCommandError | hiredis.ReplyError):
            # Never the AUTH command's arguments: they are the credentials.
            what = "authentication" if command[0] == "AUTH" else " ".join(map(str, command))
            text = reply.server_message if isinstance(reply, RedisCommandError) else str(reply)
            raise RedisUnavailable(f"redis at {address} refused {what}: {text}")


async def _connect(
    address: Address, settings: ConnectionSettings, nursery: trio.Nursery
) -> RedisConnection:
    connection = RedisConnection(await open_stream(address, settings), address)
    await nursery.start(connection.run)
    setup = setup_commands(settings)
    try:
        check_setup(address, setup, await connection.execute_many(setup))
    except BaseException:
        connection.close()
        raise
    return connection
