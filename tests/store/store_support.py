"""Helpers of the store tests: the stores under test, writing many keys, watching into a channel."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio
from etcd_servers import EtcdServer

from helios.store.etcd import EtcdStore
from helios.store.file import FileStore
from helios.store.kv import Event, KeyValueStore, MemoryStore, Put

# A bound on waiting for a real process (etcd, another writer) to deliver.
DELIVERY_TIMEOUT_S = 10.0

Batch = tuple[list[Event], int]

_prefixes = itertools.count()


@dataclass
class StoreCase:
    """A store under test, the prefix its test keeps to, and how to compact it."""

    kind: str
    store: KeyValueStore
    prefix: str
    compact: Callable[[int], Awaitable[None]]


async def open_store_case(kind: str, tmp_path: Path, etcd: EtcdServer | None) -> StoreCase:
    prefix = f"/test-{next(_prefixes)}/"
    if kind == "memory":
        memory = MemoryStore()

        async def compact_memory(revision: int) -> None:
            memory.compact(revision)

        return StoreCase(kind, memory, prefix, compact_memory)
    if kind == "file":
        file_store = await FileStore.open(tmp_path / "store" / "helios-store.json")

        async def compact_file(revision: int) -> None:
            file_store.compact(revision)

        return StoreCase(kind, file_store, prefix, compact_file)
    assert etcd is not None
    etcd_store = EtcdStore([etcd.url], timeout_ms=2000)
    return StoreCase(kind, etcd_store, prefix, etcd_store.compact)


async def put_each(
    store: KeyValueStore, keys: list[str], value: bytes = b"", *, writers: int = 8
) -> list[int]:
    """Write each key in a transaction of its own (a revision each); their revisions, sorted.

    ``writers`` transactions are in flight at a time, so that a real etcd
    takes a few thousand of them in seconds.
    """
    revisions: list[int] = []
    pending = iter(keys)

    async def writer() -> None:
        for key in pending:
            revision = await store.commit([], [Put(key, value)])
            assert revision is not None
            revisions.append(revision)

    async with trio.open_nursery() as nursery:
        for _ in range(writers):
            nursery.start_soon(writer)
    return sorted(revisions)


@asynccontextmanager
async def watching(
    store: KeyValueStore, prefix: str, start_revision: int
) -> AsyncIterator[trio.MemoryReceiveChannel[Batch]]:
    """Run ``store.watch`` while the block runs; its batches arrive on the channel."""
    send, receive = trio.open_memory_channel[Batch](math.inf)

    def handler(events: list[Event], revision: int) -> None:
        send.send_nowait((events, revision))

    async with trio.open_nursery() as nursery:
        await nursery.start(partial(store.watch, prefix, start_revision, handler))
        yield receive
        nursery.cancel_scope.cancel()


async def next_events(
    receive: trio.MemoryReceiveChannel[Batch], count: int
) -> tuple[list[Event], int]:
    """The next ``count`` events (however batched) and the revision of the last batch."""
    events: list[Event] = []
    revision = 0
    with trio.fail_after(DELIVERY_TIMEOUT_S):
        while len(events) < count:
            batch, revision = await receive.receive()
            events.extend(batch)
    assert len(events) == count, events
    return events, revision
