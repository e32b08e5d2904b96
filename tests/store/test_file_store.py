"""What the file store adds to the memory store: the file, its safety, and sharing it."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from store_support import next_events, watching

import helios
import helios.store.file
from helios.config import StoreSettings
from helios.errors import ConfigError
from helios.store.factory import open_store
from helios.store.file import FileStore, parse
from helios.store.kv import Compacted, Compare, Event, Put, StoreUnavailable


async def test_the_file_keeps_entries_without_a_lease_and_the_revision(tmp_path: Path) -> None:
    path = tmp_path / "new" / "directory" / "store.json"
    store = await FileStore.open(path)
    assert not path.exists()
    lease = await store.grant_lease(60)
    await store.commit([], [Put("/a", b"\x00binary\xff"), Put("/b", b"2")])
    revision = await store.commit([], [Put("/gateway", b"alive", lease=lease)])
    await store.aclose()
    assert revision is not None

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.with_name("store.json.lock").stat().st_mode) == 0o600
    again = await FileStore.open(path)
    try:
        entries, at = await again.range("/")
        assert [(e.key, e.value) for e in entries] == [("/a", b"\x00binary\xff"), ("/b", b"2")]
        assert at == revision
        # The changes before the file was read are gone; those after it come.
        with pytest.raises(Compacted):
            await again.watch("/", revision, lambda events, revision: None)
        async with watching(again, "/", revision + 1) as receive:
            await again.commit([], [Put("/c", b"3")])
            events, _ = await next_events(receive, 1)
        assert events == [Event("put", "/c", b"3", revision + 1)]
    finally:
        await again.aclose()
    assert sorted(p.name for p in path.parent.iterdir()) == ["store.json", "store.json.lock"]


CORRUPT = {
    "not JSON": b'{"format": "helios-store", ',
    "not an object": b"[]",
    "another format": b'{"format": "other", "version": 1, "revision": 0, "entries": []}',
    "another version": b'{"format": "helios-store", "version": 2, "revision": 0, "entries": []}',
    "a bad revision": b'{"format": "helios-store", "version": 1, "revision": -1, "entries": []}',
    "a bad entry": (
        b'{"format": "helios-store", "version": 1, "revision": 3, '
        b'"entries": [{"key": "/a", "value": "!!", "create_revision": 1, "mod_revision": 2}]}'
    ),
    "an entry from the future": (
        b'{"format": "helios-store", "version": 1, "revision": 1, '
        b'"entries": [{"key": "/a", "value": "", "create_revision": 1, "mod_revision": 2}]}'
    ),
}


@pytest.mark.parametrize("content", CORRUPT.values(), ids=CORRUPT.keys())
async def test_a_corrupt_file_is_a_config_error_and_stays_as_it_is(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "store.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=str(path)):
        await FileStore.open(path)
    with pytest.raises(ConfigError, match=str(path)):
        async with open_store(StoreSettings(file=str(path))):
            pass
    assert path.read_bytes() == content
    assert sorted(os.listdir(tmp_path)) == ["store.json", "store.json.lock"]


async def test_a_file_corrupted_while_open_is_unavailable_and_not_overwritten(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.json"
    store = await FileStore.open(path)
    try:
        await store.commit([], [Put("/a", b"1")])
        path.write_bytes(b"garbage")
        with pytest.raises(StoreUnavailable, match="not JSON"):
            await store.commit([], [Put("/a", b"2")])
        with pytest.raises(StoreUnavailable, match="not JSON"):
            await store.get("/a")
        assert path.read_bytes() == b"garbage"
    finally:
        await store.aclose()


async def test_a_failed_write_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store.json"
    store = await FileStore.open(path)
    try:
        first = await store.commit([], [Put("/a", b"1")])
        before = path.read_bytes()

        def full_disk(*args: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(helios.store.file, "_write", full_disk)
        with pytest.raises(StoreUnavailable, match="No space left"):
            await store.commit([], [Put("/a", b"2"), Put("/b", b"2")])
        monkeypatch.undo()

        entries, revision = await store.range("/")
        assert [(e.key, e.value) for e in entries] == [("/a", b"1")]
        assert revision == first
        assert path.read_bytes() == before
        assert await store.commit([], [Put("/b", b"3")]) == (first or 0) + 1
    finally:
        await store.aclose()


async def test_two_stores_on_one_file_see_each_other_and_never_reuse_a_revision(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.json"
    control = await FileStore.open(path, poll_interval_s=0.02)
    gateway = await FileStore.open(path, poll_interval_s=0.02)
    try:
        created = await control.commit([], [Put("/t/acme", b"v1")])
        assert created == 1
        entry = await gateway.get("/t/acme")
        assert entry is not None and entry.mod_revision == created

        async with watching(gateway, "/t/", created + 1) as receive:
            changed = await control.commit([Compare("/t/acme", created)], [Put("/t/acme", b"v2")])
            events, _ = await next_events(receive, 1)
            assert events == [Event("put", "/t/acme", b"v2", changed or -1)]

            # A leased entry stays in its process, but still takes a revision.
            lease = await gateway.grant_lease(60)
            leased = await gateway.commit([], [Put("/t/gw", b"up", lease=lease)])
            assert leased == (changed or 0) + 1
            assert await control.get("/t/gw") is None

            # The other process's comparison sees the change it did not make.
            assert (
                await control.commit([Compare("/t/acme", created)], [Put("/t/acme", b"x")]) is None
            )
            deleted = await control.commit([], [Put("/t/acme", b"v3"), Put("/t/new", b"n")])
            assert deleted == (leased or 0) + 1
            events, revision = await next_events(receive, 3)
        assert events[0] == Event("put", "/t/gw", b"up", leased or -1)
        assert sorted(events[1:], key=lambda e: e.key) == [
            Event("put", "/t/acme", b"v3", deleted or -1),
            Event("put", "/t/new", b"n", deleted or -1),
        ]
        assert revision == deleted
    finally:
        await control.aclose()
        await gateway.aclose()


async def test_the_factory_opens_the_file_store_without_etcd_endpoints(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    async with open_store(StoreSettings(file=str(path))) as store:
        assert isinstance(store, FileStore)
        assert store.description == f"file {path}"
        await store.commit([], [Put("/a", b"1")])
    assert parse(path.read_bytes(), path)[0] == 1


# A child that commits in a loop: five keys at once, each holding the count of
# commits so far (which is also the revision), and prints every count once the
# commit has returned.
_WRITER = """
import sys, trio
from helios.store.file import FileStore
from helios.store.kv import Put

async def main():
    store = await FileStore.open(sys.argv[1])
    entry = await store.get("/k/0")
    count = int(entry.value.split(b":")[0]) if entry else 0
    padding = "x" * 50_000
    while True:
        count += 1
        value = f"{count}:{padding}".encode()
        await store.commit([], [Put(f"/k/{i}", value) for i in range(5)])
        print(count, flush=True)

trio.run(main)
"""


def test_a_writer_killed_at_any_moment_leaves_a_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    chance = random.Random(20_240_601)
    acknowledged = 0
    for _ in range(24):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(helios.__file__).parent.parent)},
        )
        assert child.stdout is not None
        try:
            for _ in range(chance.randint(1, 6)):
                line = child.stdout.readline()
                assert line, f"the writer exited with {child.wait()}"
                acknowledged = int(line)
            time.sleep(chance.random() * 0.004)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            # Commits acknowledged while the test slept are still in the pipe.
            for line in child.stdout.read().splitlines():
                acknowledged = int(line)
            child.stdout.close()

        revision, entries = parse(path.read_bytes(), path)
        counts = {int(entry.value.split(b":")[0]) for entry in entries.values()}
        assert len(entries) == 5
        assert counts == {revision}
        # Durable once acknowledged; one more may have reached the disk unacknowledged.
        assert acknowledged <= revision <= acknowledged + 1
        acknowledged = revision

    async def reopen() -> int:
        store = await FileStore.open(path)
        await store.aclose()
        return store.revision

    assert trio.run(reopen) == acknowledged
    assert sorted(os.listdir(tmp_path)) == ["store.json", "store.json.lock"]
