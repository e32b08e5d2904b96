"""Fixtures of the store tests: the three stores, each fresh per test, and real etcd servers.

``store_case`` is parametrized over the memory store, the file store (in the
test's temporary directory) and the etcd store (on one etcd shared by the
session, under a key prefix of the test's own). Contract tests take it and
must not assume absolute revisions: other tests' writes to the shared etcd
bump them.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from etcd_servers import (  # noqa: F401 - fixtures, found by pytest by name
    EtcdServer,
    etcd_server,
    etcd_server_factory,
    shared_etcd_server,
)

from helios.store.etcd import EtcdStore
from helios.store.file import FileStore
from helios.store.kv import KeyValueStore, MemoryStore

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


@pytest.fixture(params=["memory", "file", "etcd"])
async def store_case(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreCase]:
    """Each of the three stores, fresh (etcd: a fresh prefix on the shared server)."""
    etcd = request.getfixturevalue("shared_etcd_server") if request.param == "etcd" else None
    case = await open_store_case(request.param, tmp_path, etcd)
    try:
        yield case
    finally:
        await case.store.aclose()
