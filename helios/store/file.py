"""The embedded key-value store: a memory store kept in one JSON file.

Every entry without a lease, and the store's revision, live in one file that
is replaced atomically on every change: a temporary file in the same
directory is written, flushed and synced, renamed over the old one, and the
directory is synced. A crash at any moment leaves the old file or the new
one. Entries with a lease (gateway registrations, counter resets) live only in
the memory of the process that wrote them: they must vanish with it anyway.

Two processes may share the file (a control plane next to a gateway on one
host). The rule that keeps them consistent:

- Writers take an exclusive ``flock`` on ``<file>.lock`` for the whole
  read-modify-write, so writes from all processes form one sequence.
- Under that lock, a writer that sees the file changed since it last read or
  wrote it loads it first, then checks the transaction's comparisons.
- The file carries the revision, and every change that bumps the revision
  writes the file, even one that touches only leased entries (the file then
  records just the new revision). So no two processes ever hand out the same
  revision, and revisions only grow.
- Readers and watches notice another process's writes by the file's inode,
  size and modification time (watches poll), load it, and report the
  difference as events at the revisions the file gives them.

Writes run in a worker thread so that a slow disk does not stall the event
loop; one write at a time, and a commit returns once its data is on disk.
Changes become visible to readers and watches of this process only then.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import errno
import fcntl
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard, TypeVar

import trio

from helios.errors import ConfigError
from helios.store.kv import (
    Compacted,
    Compare,
    Entry,
    Event,
    MemoryStore,
    Operation,
    StoreUnavailable,
    WatchHandler,
)

FORMAT = "helios-store"
VERSION = 1

# How often a watch looks at the file for another process's writes.
POLL_INTERVAL_S = 0.25
# How many changes are kept for watches that start in the past.
HISTORY = 10_000
# How long to wait before asking again for the lock another process holds.
_LOCK_RETRY_S = 0.005

_T = TypeVar("_T")

# (device, inode, size, modification time in ns): what tells a rewrite apart.
Signature = tuple[int, int, int, int]
# What a failed transaction restores: revision, entries, leases, history, compacted.
_State = tuple[int, dict[str, Entry], dict[int, Any], list[Event], int]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The content of the store file: its revision and entries, and its signature."""

    revision: int
    entries: dict[str, Entry]
    signature: Signature | None


class FileStore(MemoryStore):
    """A :class:`MemoryStore` persisted to one JSON file (see the module docstring).

    Open it with :meth:`open`, which reads the file (a missing file is an empty
    store) and raises :class:`ConfigError` when the file is not a store file.
    Lease times follow trio's clock, like the memory store's.
    """

    def __init__(
        self,
        path: Path,
        snapshot: Snapshot,
        lock_fd: int,
        *,
        poll_interval_s: float = POLL_INTERVAL_S,
        history: int = HISTORY,
    ) -> None:
        super().__init__(history=history)
        self.path = path
        self.description = f"file {path}"
        self._poll_interval_s = poll_interval_s
        # One transaction at a time in this process; the flock orders processes.
        self._lock = trio.Lock()
        self._lock_fd = lock_fd
        self._signature: Signature | None = None
        self._load(snapshot)
        # Changes from before the file was read are not known: a watch from
        # back then must start from a fresh snapshot.
        self._compacted = self.revision

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, poll_interval_s: float = POLL_INTERVAL_S
    ) -> FileStore:
        """Read the store at ``path``, creating its directory if missing."""
        target, snapshot, lock_fd = await trio.to_thread.run_sync(_prepare, Path(path))
        return cls(target, snapshot, lock_fd, poll_interval_s=poll_interval_s)

    # Reading.

    async def get(self, key: str) -> Entry | None:
        async with self._lock:
            await self._refresh()
            return self._entries.get(key)

    async def range(
        self, prefix: str, *, start_after: str = "", limit: int = 0
    ) -> tuple[list[Entry], int]:
        async with self._lock:
            await self._refresh()
            return await super().range(prefix, start_after=start_after, limit=limit)

    # Writing.

    async def commit(
        self, compares: Sequence[Compare], operations: Sequence[Operation]
    ) -> int | None:
        async with self._lock:
            await self._refresh()
            return await self._transaction(
                lambda: super(FileStore, self).commit(compares, operations)
            )

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
            async with self._lock:
                await self._refresh()
                if seen < self._compacted:
                    raise Compacted(self._compacted)
                batch = [
                    event
                    for event in self._history
                    if event.mod_revision > seen and event.key.startswith(prefix)
                ]
                seen = self.revision
                changed = self._changed
                wait_s = min(self._seconds_to_next_expiry(), self._poll_interval_s)
            if batch:
                handler(batch, seen)
            with trio.move_on_after(wait_s):
                await changed.wait()

    # Leases.

    async def keep_alive(self, lease: int) -> bool:
        async with self._lock:
            await self._refresh()
            return await super().keep_alive(lease)

    async def revoke_lease(self, lease: int) -> None:
        async with self._lock:
            await self._refresh()
            await self._transaction(lambda: super(FileStore, self).revoke_lease(lease))

    def _expire_leases(self) -> None:
        # Expiry changes the revision, which must go through the file, so it
        # happens in _refresh, in a transaction.
        pass

    async def _expire_now(self) -> None:
        MemoryStore._expire_leases(self)

    # Health.

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store file can be read."""
        async with self._lock:
            await self._refresh()

    async def aclose(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # The file.

    async def _refresh(self) -> None:
        """Load another process's writes, then expire leases (the caller holds ``_lock``)."""
        if await self._in_thread(_signature, self.path) != self._signature:
            self._merge(await self._in_thread(_read, self.path))
        if self._has_expired_keys():
            await self._transaction(self._expire_now)

    async def _transaction(self, change: Callable[[], Awaitable[_T]]) -> _T:
        """Apply ``change`` to memory and write the result to the file, or neither.

        The caller holds ``_lock``. ``change`` must not wait for anything, so
        that no other task sees the store half-changed. Other processes'
        writes are loaded first.
        """
        await self._lock_file()
        try:
            if await self._in_thread(_signature, self.path) != self._signature:
                self._merge(await self._in_thread(_read, self.path))
            before = self._state()
            try:
                result = await change()
                if self.revision != before[0]:
                    document = self._document()
                    self._signature = await self._in_thread(_write, self.path, document)
            except BaseException:
                self._restore(before)
                raise
            return result
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    async def _lock_file(self) -> None:
        if self._lock_fd < 0:
            raise StoreUnavailable(f"the store file {self.path} is closed")
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                # Another process is writing; a write takes a few milliseconds.
                await trio.sleep(_LOCK_RETRY_S)

    async def _in_thread(self, function: Callable[..., _T], *args: Any) -> _T:
        try:
            return await trio.to_thread.run_sync(function, *args)
        except ConfigError as error:
            raise StoreUnavailable(error.message) from error
        except OSError as error:
            raise StoreUnavailable(f"cannot use the store file {self.path}: {error}") from error

    def _load(self, snapshot: Snapshot) -> None:
        self.revision = snapshot.revision
        self._entries.update(snapshot.entries)
        self._signature = snapshot.signature

    def _merge(self, snapshot: Snapshot) -> None:
        """Bring memory to the file's content, recording the differences as events."""
        self._signature = snapshot.signature
        # A file from the past (restored from a backup, or deleted) cannot take
        # the revision back: its differences come after everything seen so far.
        behind = snapshot.revision <= self.revision
        revision = self.revision + 1 if behind else snapshot.revision

        events: list[Event] = []
        persisted = {key for key, entry in self._entries.items() if not entry.lease}
        for key in sorted(persisted - snapshot.entries.keys()):
            events.append(self._remove(key, revision))
        for key, entry in sorted(snapshot.entries.items()):
            old = self._entries.get(key)
            if old == entry:
                continue
            if old is not None and old.lease and old.lease in self._leases:
                self._leases[old.lease].keys.discard(key)
            if behind:
                entry = Entry(key, entry.value, entry.create_revision, revision)
            self._entries[key] = entry
            events.append(Event("put", key, entry.value, entry.mod_revision))

        if events:
            events.sort(key=lambda event: event.mod_revision)
            self._record(events, revision)
        elif not behind:
            self.revision = revision

    def _has_expired_keys(self) -> bool:
        now = trio.current_time()
        return any(state.deadline <= now and state.keys for state in self._leases.values())

    def _document(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "revision": self.revision,
            "entries": [
                {
                    "key": entry.key,
                    "value": base64.b64encode(entry.value).decode("ascii"),
                    "create_revision": entry.create_revision,
                    "mod_revision": entry.mod_revision,
                }
                for _, entry in sorted(self._entries.items())
                if not entry.lease
            ],
        }

    def _state(self) -> _State:
        return (
            self.revision,
            dict(self._entries),
            copy.deepcopy(self._leases),
            list(self._history),
            self._compacted,
        )

    def _restore(self, state: _State) -> None:
        self.revision, self._entries, self._leases, self._history, self._compacted = state


# File operations, run in a worker thread.


def _prepare(path: Path) -> tuple[Path, Snapshot, int]:
    """Read the file, creating its directory and clearing crashed writers' temporary files.

    Returns the absolute path, the content, and an open descriptor of the lock file.
    """
    path = path.absolute()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = os.open(
            path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
    except OSError as error:
        raise ConfigError(f"cannot open the store file {path}: {error}") from error
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            # Under the lock no write is in progress: any temporary file is a leftover.
            for leftover in path.parent.glob(f".{path.name}.*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
            snapshot = _read(path)
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
    except OSError as error:
        os.close(lock_fd)
        raise ConfigError(f"cannot read the store file {path}: {error}") from error
    except BaseException:
        os.close(lock_fd)
        raise
    return path, snapshot, lock_fd


def _signature(path: Path) -> Signature | None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def _read(path: Path) -> Snapshot:
    """The store file's content; a missing file is an empty store at revision 0."""
    try:
        with path.open("rb") as file:
            status = os.fstat(file.fileno())
            raw = file.read()
    except FileNotFoundError:
        return Snapshot(0, {}, None)
    signature = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
    revision, entries = parse(raw, path)
    return Snapshot(revision, entries, signature)


def parse(raw: bytes, path: Path) -> tuple[int, dict[str, Entry]]:
    """The revision and entries of a store file's bytes; ConfigError if they are not one."""

    def broken(what: str) -> ConfigError:
        return ConfigError(f"the store file {path} is not usable: {what}")

    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise broken(f"it is not JSON ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise broken(f'it is not a Helios store (no "format": "{FORMAT}")')
    if document.get("version") != VERSION:
        raise broken(f"version {document.get('version')!r} is not {VERSION}")
    revision = document.get("revision")
    if not _is_revision(revision):
        raise broken(f"revision must be a non-negative integer, got {revision!r}")
    items = document.get("entries")
    if not isinstance(items, list):
        raise broken('"entries" must be a list')

    entries: dict[str, Entry] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise broken(f"entry {index} is not an object")
        key, value = item.get("key"), item.get("value")
        created, modified = item.get("create_revision"), item.get("mod_revision")
        if not isinstance(key, str) or not key:
            raise broken(f"entry {index} has no key")
        if not isinstance(value, str):
            raise broken(f"entry {key!r} has no value")
        if not (_is_revision(created) and _is_revision(modified)):
            raise broken(f"entry {key!r} has bad revisions")
        if not 0 < created <= modified <= revision:
            raise broken(f"entry {key!r} has revisions beyond the store's ({revision})")
        if key in entries:
            raise broken(f"entry {key!r} appears twice")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise broken(f"entry {key!r} has a value that is not base64") from None
        entries[key] = Entry(key, data, created, modified)
    return revision, entries


def _is_revision(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _write(path: Path, document: dict[str, Any]) -> Signature:
    """Replace the file with ``document`` atomically; the new file's signature."""
    data = json.dumps(document, separators=(",", ":")).encode()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
            status = os.fstat(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _sync_directory(path.parent)
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as error:
        # Some file systems cannot sync a directory; the rename is done anyway.
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
