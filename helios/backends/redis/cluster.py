"""A Redis Cluster client with the interface of :class:`~helios.backends.redis.client.Redis`.

How it works: the client keeps a table of the 16,384 hash slots, each naming
the pool of the master that serves it, read with ``CLUSTER SLOTS`` from any
node it knows (the seed nodes at first). A command goes to the master of its
first key's slot. The cluster may answer:

- ``MOVED <slot> <node>``: the slot lives elsewhere for good. The client
  points that slot at the new node, refreshes the whole table in the
  background (at most once per 100 ms, whoever asks) and retries there.
- ``ASK <slot> <node>``: the slot is being migrated and this key already
  moved. The client sends ``ASKING`` and the command together on one
  connection of the target node; the table stays as it is.
- ``TRYAGAIN`` / ``CLUSTERDOWN``: a migration or failover is in progress;
  the client waits a little and retries, within the call's deadline; when
  the deadline would pass first, the call fails with :class:`RedisUnavailable`.

After ``MAX_REDIRECTIONS`` redirections the call fails with
:class:`RedisUnavailable`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from helios.backends.redis.client import (
    EMPTY_STATISTICS,
    ClientOptions,
    Redis,
    RedisLike,
    RedisStatistics,
    _Guarded,
)
from helios.backends.redis.connection import ConnectionSettings
from helios.backends.redis.errors import RedisCommandError, RedisTimeout, RedisUnavailable
from helios.backends.redis.protocol import (
    ASK,
    CLUSTERDOWN,
    MOVED,
    SLOT_COUNT,
    TRYAGAIN,
    Address,
    CommandArg,
    Reply,
    Script,
    command_name,
    evalsha_command,
    key_slot,
    parse_redirect,
)

log = logging.getLogger("helios.redis")

#: Redirections (MOVED or ASK) one call follows before it gives up.
MAX_REDIRECTIONS = 3

# A burst of MOVED replies (a resharding, a failover) triggers one table
# refresh per interval, however many calls see them.
_REFRESH_INTERVAL_S = 0.1

# Pause before retrying after TRYAGAIN or CLUSTERDOWN; doubles up to the cap.
_RETRY_PAUSE_S = 0.002
_RETRY_PAUSE_MAX_S = 0.05


@dataclass(frozen=True, slots=True)
class ClusterStatistics:
    """Counters of the cluster's redirections since the client was created."""

    #: Master nodes the slot table names.
    nodes: int
    moved: int
    ask: int
    #: TRYAGAIN and CLUSTERDOWN replies that were waited out.
    retries: int
    #: Slot tables read from the cluster.
    refreshes: int


class RedisCluster(_Guarded):
    """A client of a Redis Cluster: one :class:`Redis` pool per master node.

    Commands are routed by the slot of their first key: ``key=`` when given,
    else the command's second word (``GET key``, ``INCR key``, ...); a command
    with no arguments goes to any master. ``evalsha`` routes by the script's
    first key, so all keys of one call must share a slot (use a hash tag).
    """

    def __init__(
        self,
        seeds: Sequence[Address],
        nursery: trio.Nursery,
        *,
        settings: ConnectionSettings | None = None,
        options: ClientOptions | None = None,
    ) -> None:
        if not seeds:
            raise ValueError("a cluster client needs at least one seed node")
        self.options = options or ClientOptions()
        self._seeds = tuple(seeds)
        self._nursery = nursery
        self._settings = settings or ConnectionSettings()
        self._timeout_s = self.options.timeout_ms / 1000
        self._pools: dict[Address, Redis] = {}
        # slot -> pool of its master; None until the first table is read.
        self._slots: list[Redis | None] | None = None
        self._refreshing: trio.Event | None = None
        self._refreshed_at = float("-inf")
        self._refresh_error = "the slot table was not read yet"
        self._retired = EMPTY_STATISTICS
        self._closed = False
        self._calls_failed = 0
        self._moved = 0
        self._ask = 0
        self._retries = 0
        self._refreshes = 0

    def __repr__(self) -> str:
        return f"<RedisCluster {len(self._pools)} nodes>"

    async def execute(
        self, *args: CommandArg, key: CommandArg | None = None, timeout_ms: float | None = None
    ) -> Reply:
        """Run one command on the master of its key's slot and return its reply."""
        if key is None and len(args) > 1:
            key = args[1]
        return await self._guard(
            args, timeout_ms, lambda deadline: self._route(args, key, None, deadline)
        )

    async def evalsha(
        self,
        script: Script,
        keys: Sequence[CommandArg],
        args: Sequence[CommandArg],
        *,
        timeout_ms: float | None = None,
    ) -> Reply:
        """Run ``script`` on the master of its first key's slot (see :meth:`Redis.evalsha`)."""
        command = evalsha_command(script, tuple(keys), tuple(args))
        key = keys[0] if keys else None
        return await self._guard(
            command, timeout_ms, lambda deadline: self._route(command, key, script, deadline)
        )

    async def ping(self, *, timeout_ms: float | None = None) -> None:
        """Raise unless every master answers ``PING`` in time."""
        timeout_s = self._timeout_s if timeout_ms is None else timeout_ms / 1000
        deadline = trio.current_time() + timeout_s
        failures: list[RedisUnavailable | RedisCommandError] = []

        async def ping_one(pool: Redis) -> None:
            try:
                reply = await pool.call(("PING",), deadline)
            except (RedisUnavailable, RedisCommandError) as error:
                failures.append(error)
                return
            if reply != b"PONG":
                failures.append(
                    RedisUnavailable(f"redis at {pool.address} answered PING with {reply!r}")
                )

        try:
            await self._slot_table(deadline)
        except RedisTimeout:
            raise self._timed_out(("PING",), timeout_s) from None
        async with trio.open_nursery() as nursery:
            for pool in self._masters():
                nursery.start_soon(ping_one, pool)
        if any(isinstance(failure, RedisTimeout) for failure in failures):
            raise self._timed_out(("PING",), timeout_s)
        if failures:
            raise failures[0]

    def statistics(self) -> RedisStatistics:
        total = self._retired
        for pool in self._pools.values():
            total += pool.statistics()
        return RedisStatistics(
            total.connections,
            total.pending,
            total.calls,
            total.errors + self._calls_failed,
            total.reconnects,
        )

    def cluster_statistics(self) -> ClusterStatistics:
        return ClusterStatistics(
            nodes=len(self._masters()),
            moved=self._moved,
            ask=self._ask,
            retries=self._retries,
            refreshes=self._refreshes,
        )

    async def aclose(self) -> None:
        """Close every node's pool; calls in flight fail with RedisUnavailable."""
        self._closed = True
        for pool in list(self._pools.values()):
            await pool.aclose()

    def _target(self) -> str:
        return "redis cluster"

    def masters(self) -> Sequence[RedisLike]:
        return self._masters()

    def _masters(self) -> list[Redis]:
        if self._slots is None:
            return []
        return list({id(pool): pool for pool in self._slots if pool is not None}.values())

    def _pool(self, address: Address) -> Redis:
        pool = self._pools.get(address)
        if pool is None:
            pool = Redis(address, self._nursery, settings=self._settings, options=self.options)
            self._pools[address] = pool
        return pool

    async def _slot_table(self, deadline: float) -> list[Redis | None]:
        """The slot table, read first if need be."""
        if self._closed:
            raise RedisUnavailable("the redis cluster client is closed")
        if self._slots is None:
            with trio.CancelScope(deadline=deadline) as scope:
                await self._refresh(wait=True)
            if scope.cancelled_caught:
                raise RedisTimeout("reading the redis cluster's slot table took too long")
        if self._slots is None:
            raise RedisUnavailable(
                f"cannot read the redis cluster's slot table: {self._refresh_error}"
            )
        return self._slots

    async def _route(
        self,
        command: tuple[CommandArg, ...],
        key: CommandArg | None,
        script: Script | None,
        deadline: float,
    ) -> Reply:
        slots = self._slots
        if slots is None or self._closed:
            slots = await self._slot_table(deadline)
        # A keyless command goes to a random slot's master: spreading load, not a secret.
        slot = key_slot(key) if key is not None else random.randrange(SLOT_COUNT)  # noqa: S311
        pool = slots[slot]
        asking = False
        redirections = 0
        pause_s = _RETRY_PAUSE_S
        while True:
            if pool is None:
                raise RedisUnavailable(f"no node of the redis cluster serves slot {slot}")
            try:
                return await self._call(pool, command, asking, script, deadline)
            except RedisUnavailable:
                # The node may be gone for good (a replica took over its slots).
                await self._refresh(wait=False)
                raise
            except RedisCommandError as error:
                code = error.code
                if code in (MOVED, ASK):
                    redirections += 1
                    if redirections > MAX_REDIRECTIONS:
                        self._calls_failed += 1
                        raise RedisUnavailable(
                            f"redis cluster redirected {command_name(command)} more than"
                            f" {MAX_REDIRECTIONS} times; last: {error.server_message}"
                        ) from None
                    redirect = parse_redirect(error.server_message, pool.address)
                    target = self._pool(redirect.address)
                    if code == MOVED:
                        self._moved += 1
                        slots[redirect.slot] = target
                        await self._refresh(wait=False)
                    else:
                        self._ask += 1
                    pool, asking = target, code == ASK
                elif code in (TRYAGAIN, CLUSTERDOWN):
                    self._retries += 1
                    if trio.current_time() + pause_s >= deadline:
                        self._calls_failed += 1
                        raise RedisUnavailable(
                            f"redis cluster at {pool.address} answered {error.server_message}"
                        ) from None
                    await trio.sleep(pause_s)
                    pause_s = min(pause_s * 2, _RETRY_PAUSE_MAX_S)
                else:
                    raise

    async def _call(
        self,
        pool: Redis,
        command: tuple[CommandArg, ...],
        asking: bool,
        script: Script | None,
        deadline: float,
    ) -> Reply:
        if not asking:
            if script is None:
                return await pool.call(command, deadline)
            return await pool.call_script(script, command, deadline)

        # ASKING holds for the next command on the same connection only, so
        # the script (if missing) is loaded first, in the same pipeline.
        commands = [("ASKING",), command]
        if script is not None:
            commands.insert(0, ("SCRIPT", "LOAD", script.source))
        replies = await pool.call_many(commands, deadline)
        for reply in replies:
            if isinstance(reply, RedisCommandError):
                raise reply
        return replies[-1]

    async def _refresh(self, *, wait: bool) -> None:
        """Read the slot table again, unless that happened less than 100 ms ago.

        Concurrent callers share one refresh, which runs in the client's
        nursery so that no caller's deadline cuts it short for the others.
        """
        if self._refreshing is None:
            if self._slots is not None and (
                trio.current_time() - self._refreshed_at < _REFRESH_INTERVAL_S
            ):
                return
            self._refreshing = trio.Event()
            self._nursery.start_soon(self._read_slot_table, self._refreshing)
        if wait:
            await self._refreshing.wait()

    async def _read_slot_table(self, done: trio.Event) -> None:
        try:
            # Known masters first: the seeds may be gone by now.
            candidates = [pool.address for pool in self._masters()]
            candidates += [seed for seed in self._seeds if seed not in candidates]
            for address in candidates:
                if self._closed:
                    return
                pool = self._pool(address)
                deadline = trio.current_time() + self.options.connect_timeout_ms / 1000
                try:
                    reply = await pool.call(("CLUSTER", "SLOTS"), deadline)
                    self._install(parse_cluster_slots(reply, address))
                    return
                except (RedisUnavailable, RedisCommandError) as error:
                    self._refresh_error = f"{address}: {error.message}"
                except ValueError as error:
                    self._refresh_error = f"{address}: {error}"
            log.warning("cannot read the redis cluster's slot table: %s", self._refresh_error)
        finally:
            self._refreshed_at = trio.current_time()
            self._refreshing = None
            done.set()

    def _install(self, ranges: list[tuple[int, int, Address]]) -> None:
        slots: list[Redis | None] = [None] * SLOT_COUNT
        for first, last, address in ranges:
            pool = self._pool(address)
            slots[first : last + 1] = [pool] * (last - first + 1)
        if self._slots is None:
            log.info("redis cluster: %d masters", len({a for _, _, a in ranges}))
        self._slots = slots
        self._refreshes += 1

        # Pools of nodes that no longer serve any slot are closed; their
        # counters live on in the totals.
        in_use = {id(pool) for pool in slots if pool is not None}
        for address, pool in list(self._pools.items()):
            if id(pool) not in in_use:
                del self._pools[address]
                self._retired += pool.statistics()
                self._nursery.start_soon(pool.aclose)


def parse_cluster_slots(reply: object, asked: Address) -> list[tuple[int, int, Address]]:
    """(first slot, last slot, master) ranges from a ``CLUSTER SLOTS`` reply.

    Raises ``ValueError`` when the reply does not have that shape.
    """
    if not isinstance(reply, list):
        raise ValueError(f"CLUSTER SLOTS answered {reply!r}")
    ranges = []
    for entry in reply:
        if not (isinstance(entry, list) and len(entry) >= 3 and isinstance(entry[2], list)):
            raise ValueError(f"unexpected CLUSTER SLOTS entry {entry!r}")
        first, last, master = entry[0], entry[1], entry[2]
        host = master[0].decode() if master[0] else asked.host
        # "?" stands for an unknown hostname when a cluster announces names.
        if host == "?":
            host = asked.host
        ranges.append((int(first), int(last), Address(host, int(master[1]))))
    return ranges
