"""The key-value store under the control plane: one interface, three stores.

The control plane keeps tenants, policies, API keys, live gateways and counter
resets as JSON documents in a key-value store with etcd's model: every write
bumps one store-wide ``revision``; each entry remembers the revision that last
changed it (``mod_revision``); a transaction commits only if its comparisons
hold (compare-and-swap); a watch replays every change after a revision, in
order; leases make entries that vanish unless kept alive.

- :class:`MemoryStore` (this module) keeps everything in the process. It is
  the reference implementation and the test fake.
- :class:`helios.store.file.FileStore` adds one file, written atomically: the
  embedded store used without etcd.
- :class:`helios.store.etcd.EtcdStore` talks to etcd's v3 JSON gateway.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from helios.errors import BackendError, HeliosError


class StoreUnavailable(BackendError):
    """The store cannot be reached or did not answer in time."""


class Compacted(HeliosError):
    """A watch asked for changes the store no longer keeps; load a snapshot again."""

    http_status = 503
    grpc_code = "UNAVAILABLE"

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"the store has compacted its history up to revision {compact_revision}")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    value: bytes
    # The store revision that created the entry, and the one that last changed it.
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch: ``value`` is empty for a deletion."""

    kind: str  # "put" or "delete"
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Compare:
    """A condition of a transaction: ``key`` was last changed at ``mod_revision``.

    ``mod_revision == 0`` means the key must not exist.
    """

    key: str
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete ``key``, or every key starting with it when ``prefix`` is true."""

    key: str
    prefix: bool = False


Operation = Put | Delete
WatchHandler = Callable[[list[Event], int], None]


class KeyValueStore(Protocol):
    """What the control plane and the gateways need from a store.

    Every method raises :class:`StoreUnavailable` when the store cannot answer.
    """

    #: Where the store is, for logs (never with credentials).
    description: str

    async def get(self, key: str) -> Entry | None: ...

    async def range(
        self, prefix: str, *, start_after: str = "", limit: int = 0
    ) -> tuple[list[Entry], int]:
        """Entries whose key starts with ``prefix``, sorted by key, and the store's revision.

        ``start_after``: only keys greater than this one (paging);
        ``limit``: at most this many entries (0: all).
        """
        ...

    async def commit(
        self, compares: Sequence[Compare], operations: Sequence[Operation]
    ) -> int | None:
        """Apply ``operations`` atomically if every comparison holds.

        Returns the new revision, or ``None`` (and changes nothing) when a
        comparison fails.
        """
        ...

    async def watch(
        self,
        prefix: str,
        start_revision: int,
        handler: WatchHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``handler(events, revision)`` for every change under ``prefix``.

        Changes from ``start_revision`` on, in order, batched as they come;
        ``revision`` is the store revision the batch brings the watcher to:
        every change up to it has been delivered, so a watch resumed from
        ``revision + 1`` misses none. An empty batch only reports progress
        (its revision may trail one reported before). Reports started once
        the watch is established. Runs until cancelled, or raises
        :class:`Compacted` (history before ``start_revision`` is gone) or
        :class:`StoreUnavailable` (the connection was lost).
        """
        ...

    async def grant_lease(self, ttl_seconds: int) -> int:
        """A new lease that expires ``ttl_seconds`` after its last keep-alive."""
        ...

    async def keep_alive(self, lease: int) -> bool:
        """Renew a lease; ``False`` if it has already expired."""
        ...

    async def revoke_lease(self, lease: int) -> None:
        """End a lease now, deleting its entries."""
        ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class _Lease:
    ttl_seconds: int
    deadline: float
    keys: set[str]


# How many changes a MemoryStore keeps for watches that start in the past.
_HISTORY = 10_000


class MemoryStore:
    """A key-value store in this process's memory (see the module docstring).

    Time for leases is trio's clock, so tests drive expiry with ``MockClock``.
    """

    description = "memory"

    def __init__(self, *, history: int = _HISTORY) -> None:
        self.revision = 0
        self._entries: dict[str, Entry] = {}
        self._leases: dict[int, _Lease] = {}
        self._next_lease = 1
        # Changes since ``_compacted``, oldest first, for watches that start back in time.
        self._history: list[Event] = []
        self._history_size = history
        self._compacted = 0
        self._changed = trio.Event()

    # Reading.

    async def get(self, key: str) -> Entry | None:
        self._expire_leases()
        return self._entries.get(key)

    async def range(
        self, prefix: str, *, start_after: str = "", limit: int = 0
    ) -> tuple[list[Entry], int]:
        self._expire_leases()
        keys = sorted(k for k in self._entries if k.startswith(prefix) and k > start_after)
        if limit:
            keys = keys[:limit]
        return [self._entries[k] for k in keys], self.revision

    # Writing.

    async def commit(
        self, compares: Sequence[Compare], operations: Sequence[Operation]
    ) -> int | None:
        self._expire_leases()
        for compare in compares:
            entry = self._entries.get(compare.key)
            current = entry.mod_revision if entry is not None else 0
            if current != compare.mod_revision:
                return None
        for operation in operations:
            if (
                isinstance(operation, Put)
                and operation.lease
                and operation.lease not in self._leases
            ):
                raise HeliosError(f"lease {operation.lease} has expired or does not exist")
        if not operations:
            return self.revision
        revision = self.revision + 1
        events = self._apply(operations, revision)
        if events:
            self._record(events, revision)
        return self.revision

    def _apply(self, operations: Sequence[Operation], revision: int) -> list[Event]:
        events: list[Event] = []
        for operation in operations:
            if isinstance(operation, Put):
                old = self._entries.get(operation.key)
                if old is not None and old.lease:
                    self._leases[old.lease].keys.discard(operation.key)
                created = old.create_revision if old is not None else revision
                self._entries[operation.key] = Entry(
                    operation.key, operation.value, created, revision, operation.lease
                )
                if operation.lease:
                    self._leases[operation.lease].keys.add(operation.key)
                events.append(Event("put", operation.key, operation.value, revision))
                continue
            if operation.prefix:
                doomed = [k for k in self._entries if k.startswith(operation.key)]
            else:
                doomed = [operation.key] if operation.key in self._entries else []
            for key in sorted(doomed):
                events.append(self._remove(key, revision))
        return events

    def _remove(self, key: str, revision: int) -> Event:
        entry = self._entries.pop(key)
        if entry.lease and entry.lease in self._leases:
            self._leases[entry.lease].keys.discard(key)
        return Event("delete", key, b"", revision)

    def _record(self, events: list[Event], revision: int) -> None:
        self.revision = revision
        self._history.extend(events)
        if len(self._history) > self._history_size:
            dropped = len(self._history) - self._history_size
            self._compacted = self._history[dropped - 1].mod_revision
            del self._history[:dropped]
        self._changed.set()
        self._changed = trio.Event()
        self.changed(events)

    def changed(self, events: list[Event]) -> None:
        """Called after every committed change (subclasses persist here)."""

    def compact(self, revision: int) -> None:
        """Forget the history up to ``revision`` (as etcd's compaction does)."""
        self._compacted = max(self._compacted, revision)
        self._history = [event for event in self._history if event.mod_revision > revision]

    # Watching.

    async def watch(
        self,
        prefix: str,
        start_revision: int,
        handler: WatchHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if start_revision <= self._compacted:
            raise Compacted(self._compacted)
        task_status.started()
        seen = start_revision - 1
        while True:
            if seen < self._compacted:
                raise Compacted(self._compacted)
            batch = [
                event
                for event in self._history
                if event.mod_revision > seen and event.key.startswith(prefix)
            ]
            seen = self.revision
            if batch:
                handler(batch, seen)
            changed = self._changed
            with trio.move_on_after(self._seconds_to_next_expiry()):
                await changed.wait()
            self._expire_leases()

    # Leases.

    async def grant_lease(self, ttl_seconds: int) -> int:
        lease = self._next_lease
        self._next_lease += 1
        self._leases[lease] = _Lease(ttl_seconds, trio.current_time() + ttl_seconds, set())
        return lease

    async def keep_alive(self, lease: int) -> bool:
        self._expire_leases()
        state = self._leases.get(lease)
        if state is None:
            return False
        state.deadline = trio.current_time() + state.ttl_seconds
        return True

    async def revoke_lease(self, lease: int) -> None:
        state = self._leases.pop(lease, None)
        if state is not None and state.keys:
            self._drop_keys(state.keys)

    def _expire_leases(self) -> None:
        now = trio.current_time()
        expired = [lease for lease, state in self._leases.items() if state.deadline <= now]
        for lease in expired:
            state = self._leases.pop(lease)
            if state.keys:
                self._drop_keys(state.keys)

    def _drop_keys(self, keys: set[str]) -> None:
        revision = self.revision + 1
        events = [self._remove(key, revision) for key in sorted(keys) if key in self._entries]
        if events:
            self._record(events, revision)

    def _seconds_to_next_expiry(self) -> float:
        if not self._leases:
            return math.inf
        soonest = min(state.deadline for state in self._leases.values())
        return max(soonest - trio.current_time(), 0.0)

    async def aclose(self) -> None:
        return None
