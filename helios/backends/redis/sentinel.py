"""A client of a master that Redis Sentinel watches over.

How it works: the client asks the sentinels, in order, ``SENTINEL
get-master-addr-by-name <service>`` and keeps a :class:`Redis` pool to the
master named by the first one that knows. It asks again when the master
stops answering (a lost or refused connection) and when the master answers
``READONLY`` (a failover made it a replica). Rediscovery is shared by all
callers and happens at most once per 100 ms; when it names a new master the
old pool is closed. A call that saw ``READONLY`` is retried once on the new
master, within its deadline; a call that lost its connection is not retried,
since it may have been executed.

A failover does not stop the old master at once: a sentinel reconfigures it
as a replica only when it next looks at it, up to ten seconds later, and
until then it accepts writes. So, from its first call on, the client also
subscribes to ``+switch-master`` on a sentinel and moves to the new master
as soon as a sentinel announces it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import hiredis
import trio

from helios.backends.redis.client import (
    EMPTY_STATISTICS,
    ClientOptions,
    Redis,
    RedisLike,
    RedisStatistics,
    _Guarded,
)
from helios.backends.redis.connection import (
    ConnectionSettings,
    check_setup,
    describe,
    open_stream,
    setup_commands,
)
from helios.backends.redis.errors import RedisCommandError, RedisTimeout, RedisUnavailable
from helios.backends.redis.protocol import (
    READONLY,
    Address,
    CommandArg,
    Reply,
    Script,
    encode_command,
    evalsha_command,
)

log = logging.getLogger("helios.redis")

# However many calls notice a dead master, the sentinels are asked at most
# once per interval.
_DISCOVERY_INTERVAL_S = 0.1


class RedisSentinel(_Guarded):
    """A pooled client of the master that the sentinels name for ``service_name``."""

    def __init__(
        self,
        sentinels: Sequence[Address],
        service_name: str,
        nursery: trio.Nursery,
        *,
        settings: ConnectionSettings | None = None,
        sentinel_settings: ConnectionSettings | None = None,
        options: ClientOptions | None = None,
    ) -> None:
        if not sentinels:
            raise ValueError("a sentinel client needs at least one sentinel")
        self.service_name = service_name
        self.options = options or ClientOptions()
        self._nursery = nursery
        self._settings = settings or ConnectionSettings()
        self._sentinel_addresses = tuple(sentinels)
        self._sentinel_settings = sentinel_settings or ConnectionSettings()
        self._timeout_s = self.options.timeout_ms / 1000
        sentinel_options = ClientOptions(
            timeout_ms=self.options.connect_timeout_ms,
            pool_size=1,
            connect_timeout_ms=self.options.connect_timeout_ms,
            reconnect_min_ms=self.options.reconnect_min_ms,
            reconnect_max_ms=self.options.reconnect_max_ms,
        )
        self._sentinels = [
            Redis(address, nursery, settings=sentinel_settings, options=sentinel_options)
            for address in sentinels
        ]
        self._master: Redis | None = None
        self._watcher: trio.CancelScope | None = None
        self._discovering: trio.Event | None = None
        self._discovered_at = float("-inf")
        self._discovery_error = "the sentinels were not asked yet"
        self._retired = EMPTY_STATISTICS
        self._closed = False
        self._calls_failed = 0

    def __repr__(self) -> str:
        return f"<RedisSentinel {self.service_name} master={self.master_address}>"

    @property
    def master_address(self) -> Address | None:
        """The master the client sends commands to; ``None`` before the first call."""
        return None if self._master is None else self._master.address

    async def execute(self, *args: CommandArg, timeout_ms: float | None = None) -> Reply:
        """Run one command on the master and return its reply."""
        return await self._guard(
            args,
            timeout_ms,
            lambda deadline: self._on_master(lambda master: master.call(args, deadline), deadline),
        )

    async def evalsha(
        self,
        script: Script,
        keys: Sequence[CommandArg],
        args: Sequence[CommandArg],
        *,
        timeout_ms: float | None = None,
    ) -> Reply:
        """Run ``script`` on the master (see :meth:`Redis.evalsha`)."""
        command = evalsha_command(script, tuple(keys), tuple(args))
        return await self._guard(
            command,
            timeout_ms,
            lambda deadline: self._on_master(
                lambda master: master.call_script(script, command, deadline), deadline
            ),
        )

    async def ping(self, *, timeout_ms: float | None = None) -> None:
        """Raise unless the master answers ``PING`` in time."""
        reply = await self.execute("PING", timeout_ms=timeout_ms)
        if reply != b"PONG":
            raise RedisUnavailable(f"redis at {self.master_address} answered PING with {reply!r}")

    def masters(self) -> Sequence[RedisLike]:
        return [self]

    def statistics(self) -> RedisStatistics:
        total = self._retired
        if self._master is not None:
            total += self._master.statistics()
        return RedisStatistics(
            total.connections,
            total.pending,
            total.calls,
            total.errors + self._calls_failed,
            total.reconnects,
        )

    async def aclose(self) -> None:
        """Close the master's and the sentinels' connections."""
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
        if self._master is not None:
            await self._master.aclose()
        for sentinel in self._sentinels:
            await sentinel.aclose()

    def _target(self) -> str:
        return f"redis master {self.service_name!r}"

    async def _on_master(
        self, operation: Callable[[Redis], Awaitable[Reply]], deadline: float
    ) -> Reply:
        if self._closed:
            raise RedisUnavailable("the redis sentinel client is closed")
        for attempt in range(2):
            master = self._master
            if master is None:
                await self._discover_within(deadline)
                master = self._master
                if master is None:
                    raise RedisUnavailable(
                        f"no sentinel names a master for {self.service_name!r}:"
                        f" {self._discovery_error}"
                    )
            try:
                return await operation(master)
            except RedisUnavailable:
                await self._discover(wait=False)
                raise
            except RedisCommandError as error:
                if error.code != READONLY:
                    raise
                if attempt > 0:
                    self._calls_failed += 1
                    raise RedisUnavailable(
                        f"redis master {self.service_name!r} at {master.address} is read-only;"
                        " a failover is in progress"
                    ) from None
                # The master became a replica; the sentinels know its successor.
                self._discovered_at = float("-inf")
                await self._discover_within(deadline)
        raise AssertionError("unreachable")

    async def _discover_within(self, deadline: float) -> None:
        with trio.CancelScope(deadline=deadline):
            await self._discover(wait=True)
            return
        raise RedisTimeout(f"the sentinels did not name the master of {self.service_name!r}")

    async def _discover(self, *, wait: bool) -> None:
        """Ask the sentinels for the master, unless that happened less than 100 ms ago."""
        if self._watcher is None and not self._closed:
            self._watcher = trio.CancelScope()
            self._nursery.start_soon(self._watch, self._watcher)
        if self._discovering is None:
            if trio.current_time() - self._discovered_at < _DISCOVERY_INTERVAL_S:
                return
            self._discovering = trio.Event()
            self._nursery.start_soon(self._ask_sentinels, self._discovering)
        if wait:
            await self._discovering.wait()

    async def _ask_sentinels(self, done: trio.Event) -> None:
        try:
            for sentinel in self._sentinels:
                if self._closed:
                    return
                try:
                    reply = await sentinel.execute(
                        "SENTINEL", "get-master-addr-by-name", self.service_name
                    )
                except (RedisUnavailable, RedisCommandError) as error:
                    self._discovery_error = f"sentinel {sentinel.address}: {error.message}"
                    continue
                if not (isinstance(reply, list) and len(reply) == 2):
                    self._discovery_error = (
                        f"sentinel {sentinel.address} does not know {self.service_name!r}"
                    )
                    continue
                self._follow(Address(reply[0].decode(), int(reply[1])))
                return
            log.warning(
                "cannot discover the redis master %r: %s", self.service_name, self._discovery_error
            )
        finally:
            self._discovered_at = trio.current_time()
            self._discovering = None
            done.set()

    def _follow(self, address: Address) -> None:
        old = self._master
        if self._closed or (old is not None and old.address == address):
            return
        log.info("redis master %r is at %s", self.service_name, address)
        self._master = Redis(address, self._nursery, settings=self._settings, options=self.options)
        if old is not None:
            self._retired += old.statistics()
            self._nursery.start_soon(old.aclose)

    async def _watch(self, scope: trio.CancelScope) -> None:
        """Follow the sentinels' ``+switch-master`` announcements until the client closes.

        Sentinels are tried in turn; after a failure the next attempt backs
        off like a pool's reconnection.
        """
        options = self.options
        backoff_ms = 0.0
        turn = 0
        with scope:
            while not self._closed:
                address = self._sentinel_addresses[turn % len(self._sentinel_addresses)]
                turn += 1
                try:
                    with trio.fail_after(options.connect_timeout_ms / 1000):
                        stream = await open_stream(address, self._sentinel_settings)
                    async with stream:
                        await self._listen(address, stream)
                        backoff_ms = 0.0
                except (
                    trio.TooSlowError,
                    OSError,
                    trio.BrokenResourceError,
                    trio.ClosedResourceError,
                    hiredis.ProtocolError,
                    RedisUnavailable,
                ) as error:
                    log.debug("redis.sentinel.watch.failed %s: %s", address, describe(error))
                backoff_ms = min(
                    max(backoff_ms * 2, options.reconnect_min_ms), options.reconnect_max_ms
                )
                await trio.sleep(backoff_ms / 1000)

    async def _listen(self, address: Address, stream: trio.abc.Stream) -> None:
        setup = setup_commands(self._sentinel_settings)
        reader = hiredis.Reader()
        await stream.send_all(
            b"".join(
                encode_command(command) for command in [*setup, ("SUBSCRIBE", "+switch-master")]
            )
        )
        replies: list[object] = []
        subscribed = False
        while True:
            data = await stream.receive_some()
            if not data:
                return
            reader.feed(bytes(data))
            while (reply := reader.gets()) is not False:
                if not subscribed:
                    replies.append(reply)
                    if len(replies) <= len(setup):
                        continue
                    check_setup(address, setup, replies[: len(setup)])
                    subscribed = True
                    # Announcements made while nobody listened are lost: ask.
                    self._discovered_at = float("-inf")
                    await self._discover(wait=False)
                    continue
                self._announced(reply)

    def _announced(self, message: object) -> None:
        # ["message", "+switch-master", "<name> <old ip> <old port> <new ip> <new port>"]
        if not (isinstance(message, list) and len(message) == 3 and message[0] == b"message"):
            return
        fields = message[2].decode(errors="replace").split()
        if len(fields) == 5 and fields[0] == self.service_name and fields[4].isdigit():
            log.info("sentinel announced a new master for %r", self.service_name)
            self._follow(Address(fields[3], int(fields[4])))
