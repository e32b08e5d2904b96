"""The contract every key-value store keeps: the memory store, the file store and etcd."""

from __future__ import annotations

import pytest
import trio
from store_support import StoreCase, next_events, watching

from helios.errors import HeliosError
from helios.store.kv import Compacted, Compare, Delete, Event, Put


async def test_a_put_is_read_back_with_its_revisions(store_case: StoreCase) -> None:
    store, key = store_case.store, store_case.prefix + "a"
    assert await store.get(key) is None

    created = await store.commit([], [Put(key, b"one")])
    assert created is not None
    entry = await store.get(key)
    assert entry is not None
    assert (entry.key, entry.value) == (key, b"one")
    assert entry.create_revision == entry.mod_revision == created

    changed = await store.commit([], [Put(key, b"two")])
    assert changed is not None and changed > created
    entry = await store.get(key)
    assert entry is not None
    assert (entry.value, entry.create_revision, entry.mod_revision) == (b"two", created, changed)


async def test_range_keeps_to_its_prefix_in_key_order(store_case: StoreCase) -> None:
    store, prefix = store_case.store, store_case.prefix
    revision = await store.commit(
        [],
        [
            Put(prefix + "ab", b"sibling"),
            Put(prefix + "a/2", b"2"),
            Put(prefix + "a/1", b"1"),
            Put(prefix + "a", b"parent"),
            Put(prefix + "a/\u00e9", b"accent"),
        ],
    )
    assert revision is not None

    entries, at = await store.range(prefix + "a/")
    assert [e.key for e in entries] == [prefix + "a/1", prefix + "a/2", prefix + "a/\u00e9"]
    assert [e.value for e in entries] == [b"1", b"2", b"accent"]
    assert at >= revision

    everything, _ = await store.range(prefix)
    assert [e.key for e in everything] == sorted(
        prefix + k for k in ("ab", "a/2", "a/1", "a", "a/\u00e9")
    )
    assert await store.range(prefix + "none/") == ([], at)


async def test_range_pages_with_start_after_and_limit(store_case: StoreCase) -> None:
    store, prefix = store_case.store, store_case.prefix
    keys = [f"{prefix}k/{i}" for i in range(5)]
    await store.commit([], [Put(key, b"v") for key in keys])

    pages: list[list[str]] = []
    start_after = ""
    while True:
        entries, _ = await store.range(prefix + "k/", start_after=start_after, limit=2)
        if not entries:
            break
        pages.append([e.key for e in entries])
        start_after = entries[-1].key
    assert pages == [keys[0:2], keys[2:4], keys[4:5]]

    # start_after before the prefix starts at the prefix.
    entries, _ = await store.range(prefix + "k/", start_after=prefix, limit=1)
    assert [e.key for e in entries] == keys[:1]


async def test_a_transaction_applies_only_when_its_comparisons_hold(
    store_case: StoreCase,
) -> None:
    store, prefix = store_case.store, store_case.prefix
    a, b = prefix + "a", prefix + "b"
    first = await store.commit([], [Put(a, b"1"), Put(b, b"1")])
    assert first is not None

    assert await store.commit([Compare(a, first - 1)], [Put(a, b"2"), Delete(b)]) is None
    entries, revision = await store.range(prefix)
    unchanged = [(a, b"1", first), (b, b"1", first)]
    assert [(e.key, e.value, e.mod_revision) for e in entries] == unchanged
    assert revision == first

    second = await store.commit([Compare(a, first), Compare(b, first)], [Put(a, b"2"), Delete(b)])
    assert second == first + 1
    entries, _ = await store.range(prefix)
    assert [(e.key, e.value, e.mod_revision) for e in entries] == [(a, b"2", second)]


async def test_a_comparison_with_a_revision_the_key_has_moved_past_fails(
    store_case: StoreCase,
) -> None:
    store, key = store_case.store, store_case.prefix + "stale"
    read = await store.commit([], [Put(key, b"1")])
    assert read is not None
    # Someone else changes the key after it was read.
    changed = await store.commit([Compare(key, read)], [Put(key, b"2")])
    assert changed is not None

    assert await store.commit([Compare(key, read)], [Put(key, b"3")]) is None
    entry = await store.get(key)
    assert entry is not None and (entry.value, entry.mod_revision) == (b"2", changed)


async def test_of_concurrent_writers_comparing_one_revision_exactly_one_commits(
    store_case: StoreCase,
) -> None:
    store, key = store_case.store, store_case.prefix + "raced"
    read = await store.commit([], [Put(key, b"start")])
    assert read is not None
    results: dict[bytes, int | None] = {}
    start = trio.Event()

    async def writer(value: bytes) -> None:
        await start.wait()
        results[value] = await store.commit([Compare(key, read)], [Put(key, value)])

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(writer, f"writer-{i}".encode())
        start.set()

    winners = [value for value, revision in results.items() if revision is not None]
    assert len(results) == 8 and len(winners) == 1, results
    entry = await store.get(key)
    assert entry is not None
    assert (entry.value, entry.mod_revision) == (winners[0], results[winners[0]])


async def test_compare_with_revision_zero_means_the_key_must_not_exist(
    store_case: StoreCase,
) -> None:
    store, key = store_case.store, store_case.prefix + "only-once"
    assert await store.commit([Compare(key, 0)], [Put(key, b"first")]) is not None
    assert await store.commit([Compare(key, 0)], [Put(key, b"second")]) is None
    entry = await store.get(key)
    assert entry is not None and entry.value == b"first"


async def test_a_prefix_delete_removes_the_keys_under_it_only(store_case: StoreCase) -> None:
    store, prefix = store_case.store, store_case.prefix
    await store.commit(
        [], [Put(prefix + "t/1", b""), Put(prefix + "t/2", b""), Put(prefix + "t2", b"")]
    )
    assert await store.commit([], [Delete(prefix + "t/", prefix=True)]) is not None
    entries, _ = await store.range(prefix)
    assert [e.key for e in entries] == [prefix + "t2"]
    # Deleting what does not exist is no error.
    assert await store.commit([], [Delete(prefix + "missing")]) is not None


async def test_a_watch_from_the_past_replays_every_change_in_order(store_case: StoreCase) -> None:
    store, prefix = store_case.store, store_case.prefix
    first = await store.commit([], [Put(prefix + "a", b"1")])
    second = await store.commit([], [Put(prefix + "b", b"2"), Put(prefix + "a", b"3")])
    third = await store.commit([], [Delete(prefix + "a")])
    await store.commit([], [Put(prefix.rstrip("/") + "-other", b"not mine")])
    assert first is not None and second is not None and third is not None

    async with watching(store, prefix, first) as receive:
        events, revision = await next_events(receive, 4)
    assert events == [
        Event("put", prefix + "a", b"1", first),
        Event("put", prefix + "b", b"2", second),
        Event("put", prefix + "a", b"3", second),
        Event("delete", prefix + "a", b"", third),
    ]
    assert revision >= third


async def test_a_watch_sees_changes_as_they_happen(store_case: StoreCase) -> None:
    store, prefix = store_case.store, store_case.prefix
    _, start = await store.range(prefix)
    async with watching(store, prefix, start + 1) as receive:
        put = await store.commit([], [Put(prefix + "live", b"1")])
        events, revision = await next_events(receive, 1)
        assert events == [Event("put", prefix + "live", b"1", put or -1)]
        assert revision >= (put or 0)

        deleted = await store.commit([], [Delete(prefix, prefix=True)])
        events, _ = await next_events(receive, 1)
        assert events == [Event("delete", prefix + "live", b"", deleted or -1)]


async def test_a_watch_from_before_a_compaction_raises_compacted(store_case: StoreCase) -> None:
    store, prefix = store_case.store, store_case.prefix
    first = await store.commit([], [Put(prefix + "c", b"1")])
    latest = await store.commit([], [Put(prefix + "c", b"2")])
    assert first is not None and latest is not None
    await store_case.compact(latest)

    with pytest.raises(Compacted) as raised, trio.fail_after(10):
        await store.watch(prefix, first, lambda events, revision: None)
    assert raised.value.compact_revision >= latest - 1


async def test_revoking_a_lease_deletes_its_keys(store_case: StoreCase) -> None:
    store, prefix = store_case.store, store_case.prefix
    lease = await store.grant_lease(30)
    put = await store.commit([], [Put(prefix + "leased", b"x", lease=lease)])
    assert put is not None
    entry = await store.get(prefix + "leased")
    assert entry is not None and entry.lease == lease
    assert await store.keep_alive(lease)

    async with watching(store, prefix, put + 1) as receive:
        await store.revoke_lease(lease)
        events, _ = await next_events(receive, 1)
    assert [(e.kind, e.key) for e in events] == [("delete", prefix + "leased")]
    assert await store.get(prefix + "leased") is None
    assert not await store.keep_alive(lease)
    # Revoking again is no error.
    await store.revoke_lease(lease)


async def test_a_put_with_a_lease_that_does_not_exist_is_refused(store_case: StoreCase) -> None:
    store, key = store_case.store, store_case.prefix + "leased"
    lease = await store.grant_lease(30)
    await store.revoke_lease(lease)
    with pytest.raises(HeliosError):
        await store.commit([], [Put(key, b"x", lease=lease)])
    assert await store.get(key) is None
