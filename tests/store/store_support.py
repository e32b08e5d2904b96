"""Helpers of the store tests: watching a store into a channel, and reading what arrives."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio

from helios.store.kv import Event, KeyValueStore

# A bound on waiting for a real process (etcd, another writer) to deliver.
DELIVERY_TIMEOUT_S = 10.0

Batch = tuple[list[Event], int]


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
