"""A small pool of pipelined connections to one Redis server.

:class:`Redis` is what STRONG mode calls once per decision. It keeps up to
``pool_size`` connections, opened lazily and handed out in turn; each call
has a deadline (``timeout_ms``, 50 ms unless the call says otherwise) after
which it fails with :class:`RedisTimeout`. A lost connection is reopened on
demand; while the server stays unreachable, attempts back off exponentially
(10 ms doubling up to 1 s by default) and calls in between fail at once with
:class:`RedisUnavailable` instead of waiting. Recovery needs no restart.

:class:`RedisLike` is the interface the standalone, cluster and sentinel
clients share; :func:`helios.backends.redis.open_redis` picks one from a URL.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from helios.backends.redis.connection import ConnectionSettings, RedisConnection, open_connection
from helios.backends.redis.errors import RedisCommandError, RedisTimeout, RedisUnavailable
from helios.backends.redis.protocol import (
    LOADING,
    NOSCRIPT,
    Address,
    CommandArg,
    Reply,
    Script,
    command_name,
    evalsha_command,
)
from helios.errors import ConfigError

log = logging.getLogger("helios.redis")


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """How a client talks to each server it uses."""

    #: Deadline of a call unless the call names its own.
    timeout_ms: float = 50.0
    #: Connections per server.
    pool_size: int = 4
    #: Deadline of opening one connection, including AUTH and SELECT.
    connect_timeout_ms: float = 1000.0
    #: Wait before the second attempt to reach an unreachable server; it doubles
    #: with every failed attempt up to ``reconnect_max_ms``.
    reconnect_min_ms: float = 10.0
    reconnect_max_ms: float = 1000.0

    def __post_init__(self) -> None:
        if not self.timeout_ms > 0:
            raise ConfigError(
                f"timeout_ms must be positive, got {self.timeout_ms!r}", field="timeout_ms"
            )
        if self.pool_size < 1:
            raise ConfigError(
                f"pool_size must be at least 1, got {self.pool_size!r}", field="pool_size"
            )
        if not self.connect_timeout_ms > 0:
            raise ConfigError(
                f"connect_timeout_ms must be positive, got {self.connect_timeout_ms!r}",
                field="connect_timeout_ms",
            )
        if not 0 < self.reconnect_min_ms <= self.reconnect_max_ms:
            raise ConfigError(
                "reconnect_min_ms must be positive and at most reconnect_max_ms, got"
                f" {self.reconnect_min_ms!r} and {self.reconnect_max_ms!r}",
                field="reconnect_min_ms",
            )


@dataclass(frozen=True, slots=True)
class RedisStatistics:
    """A snapshot of a client's state and counters since it was created."""

    #: Open connections.
    connections: int
    #: Replies still expected, including those of calls that timed out.
    pending: int
    #: Commands sent (a cluster redirection counts as another command).
    calls: int
    #: Calls that failed: timeouts, lost or refused connections, error replies.
    errors: int
    #: Connections opened to replace one that was lost or never came up.
    reconnects: int

    def __add__(self, other: RedisStatistics) -> RedisStatistics:
        return RedisStatistics(
            self.connections + other.connections,
            self.pending + other.pending,
            self.calls + other.calls,
            self.errors + other.errors,
            self.reconnects + other.reconnects,
        )


EMPTY_STATISTICS = RedisStatistics(0, 0, 0, 0, 0)


class RedisLike(Protocol):
    """What STRONG mode needs from Redis, whether standalone, cluster or sentinel."""

    async def execute(self, *args: CommandArg, timeout_ms: float | None = None) -> Reply:
        """Run one command and return its reply."""
        ...

    async def evalsha(
        self,
        script: Script,
        keys: Sequence[CommandArg],
        args: Sequence[CommandArg],
        *,
        timeout_ms: float | None = None,
    ) -> Reply:
        """Run a Lua script by its SHA-1, loading it first if the server lacks it."""
        ...

    async def ping(self, *, timeout_ms: float | None = None) -> None:
        """Raise unless Redis answers ``PING``."""
        ...

    def statistics(self) -> RedisStatistics: ...

    def masters(self) -> Sequence[RedisLike]:
        """A client for each master (one, unless the store is a cluster): for SCAN."""
        ...

    async def aclose(self) -> None:
        """Close every connection; calls in flight fail with RedisUnavailable."""
        ...


class _Member:
    """One place in the pool: a connection, or the attempt to open one."""

    __slots__ = ("backoff_ms", "connecting", "connection", "opened", "retry_at")

    def __init__(self) -> None:
        self.connection: RedisConnection | None = None
        self.connecting: trio.CancelScope | None = None
        self.retry_at = float("-inf")
        self.backoff_ms = 0.0
        self.opened = 0


class _Guarded:
    """What every client's entry points share: the call's deadline, a timeout
    reported once in Helios's terms, and the count of failed calls."""

    _timeout_s: float
    _calls_failed: int

    def _target(self) -> str:
        """Who did not answer, for messages (never with a password)."""
        raise NotImplementedError

    def _timed_out(self, command: tuple[CommandArg, ...], timeout_s: float) -> RedisTimeout:
        self._calls_failed += 1
        return RedisTimeout(
            f"{self._target()} did not answer {command_name(command)}"
            f" within {timeout_s * 1000:g} ms"
        )

    async def _guard(
        self,
        command: tuple[CommandArg, ...],
        timeout_ms: float | None,
        run: Callable[[float], Awaitable[Reply]],
    ) -> Reply:
        """``run(deadline)``, with the timeout and errors accounted for."""
        timeout_s = self._timeout_s if timeout_ms is None else timeout_ms / 1000
        try:
            return await run(trio.current_time() + timeout_s)
        except RedisTimeout:
            raise self._timed_out(command, timeout_s) from None
        except RedisCommandError:
            self._calls_failed += 1
            raise


class Redis(_Guarded):
    """A pool of pipelined connections to one Redis server.

    Background work (the connections' readers and writers, connection
    attempts) runs in ``nursery``, which must outlive the client; ``aclose``
    ends all of it. :func:`helios.backends.redis.open_redis` manages both.
    """

    def __init__(
        self,
        address: Address,
        nursery: trio.Nursery,
        *,
        settings: ConnectionSettings | None = None,
        options: ClientOptions | None = None,
    ) -> None:
        self.address = address
        self.options = options or ClientOptions()
        self._settings = settings or ConnectionSettings()
        self._nursery = nursery
        self._timeout_s = self.options.timeout_ms / 1000
        self._members = [_Member() for _ in range(self.options.pool_size)]
        # The members whose connection was usable when last looked at, in turn.
        self._ready: list[_Member] = []
        self._turn = 0
        # Set (and replaced) whenever a connection attempt ends.
        self._attempt_ended = trio.Event()
        self._last_error = "no connection attempted yet"
        self._reachable: bool | None = None
        self._closed = False
        self._calls_failed = 0
        self._reconnects = 0
        self._closed_calls = 0

    def __repr__(self) -> str:
        return f"<Redis {self.address} {len(self._ready)}/{len(self._members)} connections>"

    async def execute(self, *args: CommandArg, timeout_ms: float | None = None) -> Reply:
        """Run one command and return its reply.

        Raises :class:`RedisTimeout` after ``timeout_ms`` (default: the
        client's), :class:`RedisUnavailable` when Redis cannot be reached and
        :class:`RedisCommandError` for an error reply.
        """
        return await self._guard(args, timeout_ms, lambda deadline: self.call(args, deadline))

    async def evalsha(
        self,
        script: Script,
        keys: Sequence[CommandArg],
        args: Sequence[CommandArg],
        *,
        timeout_ms: float | None = None,
    ) -> Reply:
        """Run ``script`` by its SHA-1 on ``keys`` and ``args``.

        If the server does not know the script (it restarted, or someone ran
        ``SCRIPT FLUSH``), the script is loaded and run again in one round trip.
        """
        command = evalsha_command(script, tuple(keys), tuple(args))
        return await self._guard(
            command, timeout_ms, lambda deadline: self.call_script(script, command, deadline)
        )

    async def ping(self, *, timeout_ms: float | None = None) -> None:
        """Raise unless the server answers ``PING`` in time."""
        reply = await self.execute("PING", timeout_ms=timeout_ms)
        if reply != b"PONG":
            raise RedisUnavailable(f"redis at {self.address} answered PING with {reply!r}")

    def masters(self) -> Sequence[RedisLike]:
        return [self]

    def statistics(self) -> RedisStatistics:
        connections = [m.connection for m in self._members if m.connection is not None]
        open_connections = [c for c in connections if c.broken is None]
        return RedisStatistics(
            connections=len(open_connections),
            pending=sum(c.pending for c in open_connections),
            calls=self._closed_calls + sum(c.calls for c in connections),
            errors=self._calls_failed,
            reconnects=self._reconnects,
        )

    async def aclose(self) -> None:
        """Close every connection and stop connecting; calls in flight fail."""
        self._closed = True
        self._last_error = "the client is closed"
        for member in self._members:
            if member.connecting is not None:
                member.connecting.cancel()
            if member.connection is not None:
                member.connection.close()
        self._ready.clear()
        await trio.lowlevel.checkpoint()

    # The methods below take an absolute deadline (trio.current_time() based)
    # instead of a timeout, so that the cluster and sentinel clients can run
    # several of them within the deadline of one call of their own. They
    # raise a bare RedisTimeout and count only lost connections as failed
    # calls: error replies may yet be handled (MOVED, NOSCRIPT, READONLY...),
    # so the public methods count those, and timeouts, once.

    async def call(self, command: tuple[CommandArg, ...], deadline: float = math.inf) -> Reply:
        """Run one command; fail with :class:`RedisTimeout` at ``deadline``."""
        connection = self._next_connection() or await self._wait_for_connection(deadline)
        try:
            return await connection.call(command, deadline)
        except RedisCommandError as error:
            if error.code != LOADING:
                raise
            # Starting up: the server is there but cannot answer yet.
            self._calls_failed += 1
            raise RedisUnavailable(f"redis at {self.address} is loading its dataset") from error
        except RedisTimeout:
            raise
        except RedisUnavailable:
            self._calls_failed += 1
            raise

    async def call_many(
        self, commands: Sequence[tuple[CommandArg, ...]], deadline: float = math.inf
    ) -> list[Reply | RedisCommandError]:
        """Run commands back to back on one connection (see ``RedisConnection.execute_many``)."""
        connection = self._next_connection() or await self._wait_for_connection(deadline)
        try:
            return await connection.execute_many(commands, deadline)
        except RedisTimeout:
            raise
        except RedisUnavailable:
            self._calls_failed += 1
            raise

    async def call_script(
        self, script: Script, command: tuple[CommandArg, ...], deadline: float = math.inf
    ) -> Reply:
        """Run an ``EVALSHA`` command of ``script``, loading the script if the server lacks it."""
        try:
            return await self.call(command, deadline)
        except RedisCommandError as error:
            if error.code != NOSCRIPT:
                raise
        return await self.load_and_call(script, command, deadline)

    async def load_and_call(
        self, script: Script, command: tuple[CommandArg, ...], deadline: float = math.inf
    ) -> Reply:
        """``SCRIPT LOAD`` then ``command``, pipelined on one connection."""
        load, reply = await self.call_many([("SCRIPT", "LOAD", script.source), command], deadline)
        for result in (load, reply):
            if isinstance(result, RedisCommandError):
                raise result
        return reply

    def _target(self) -> str:
        return f"redis at {self.address}"

    def _next_connection(self) -> RedisConnection | None:
        """A usable connection, in turn; starts connecting where the pool is short."""
        ready = self._ready
        if len(ready) < len(self._members):
            self._start_connecting()
        while ready:
            self._turn += 1
            member = ready[self._turn % len(ready)]
            connection = member.connection
            if connection is not None and connection.broken is None:
                return connection
            self._lost(member)
        return None

    async def _wait_for_connection(self, deadline: float) -> RedisConnection:
        with trio.CancelScope(deadline=deadline):
            while True:
                if self._closed:
                    raise RedisUnavailable(f"the client for redis at {self.address} is closed")
                connection = self._next_connection()
                if connection is not None:
                    return connection
                if all(member.connecting is None for member in self._members):
                    # Every member is backing off: fail now rather than wait.
                    self._calls_failed += 1
                    raise RedisUnavailable(
                        f"redis at {self.address} is unavailable: {self._last_error}"
                    )
                await self._attempt_ended.wait()
        raise RedisTimeout(f"connecting to redis at {self.address} took too long")

    def _lost(self, member: _Member) -> None:
        connection = member.connection
        assert connection is not None
        self._ready.remove(member)
        member.connection = None
        self._closed_calls += connection.calls
        self._last_error = connection.broken or "the connection was closed"
        # The first attempt after a loss goes out at once; failures back off.
        member.retry_at = float("-inf")

    def _start_connecting(self) -> None:
        if self._closed:
            return
        now = trio.current_time()
        for member in self._members:
            if member.connection is not None and member.connection.broken is not None:
                self._lost(member)
            if member.connection is None and member.connecting is None and member.retry_at <= now:
                member.connecting = trio.CancelScope()
                self._nursery.start_soon(self._connect, member, member.connecting)

    async def _connect(self, member: _Member, scope: trio.CancelScope) -> None:
        try:
            with scope:
                connection = await open_connection(
                    self.address,
                    self._settings,
                    self._nursery,
                    timeout_ms=self.options.connect_timeout_ms,
                )
                if self._closed:
                    connection.close()
                    return
                member.connection = connection
                member.backoff_ms = 0.0
                member.opened += 1
                if member.opened > 1 or self._reachable is False:
                    self._reconnects += 1
                self._ready.append(member)
                if self._reachable is not True:
                    if self._reachable is False:
                        log.info("redis at %s is reachable again", self.address)
                    self._reachable = True
        except RedisUnavailable as error:
            options = self.options
            member.backoff_ms = min(
                max(member.backoff_ms * 2, options.reconnect_min_ms), options.reconnect_max_ms
            )
            member.retry_at = trio.current_time() + member.backoff_ms / 1000
            self._last_error = error.message
            if self._reachable is not False:
                log.warning("redis at %s is unavailable: %s", self.address, error.message)
                self._reachable = False
        finally:
            member.connecting = None
            self._attempt_ended.set()
            self._attempt_ended = trio.Event()
