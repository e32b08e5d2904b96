"""Leases that are not kept alive expire and take their keys with them.

The memory and file stores follow trio's clock, so their test drives it with
``MockClock``; etcd keeps real time, so its test waits (a few seconds at most).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio.testing
from etcd_servers import EtcdServer
from store_support import next_events, open_store_case, watching

from helios.store.etcd import EtcdStore
from helios.store.kv import Event, Put


@pytest.mark.parametrize("kind", ["memory", "file"])
async def test_a_lease_expires_ttl_seconds_after_its_last_keep_alive(
    kind: str, tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    case = await open_store_case(kind, tmp_path, None)
    store, prefix = case.store, case.prefix
    leased, kept = prefix + "leased", prefix + "kept"
    try:
        lease = await store.grant_lease(10)
        put = await store.commit([], [Put(leased, b"x", lease=lease), Put(kept, b"y")])
        assert put is not None
        async with watching(store, prefix, put + 1) as receive:
            mock_clock.jump(9)
            assert await store.keep_alive(lease)
            mock_clock.jump(9.5)
            assert await store.get(leased) is not None

            mock_clock.jump(0.5)
            events, _ = await next_events(receive, 1)
        assert events == [Event("delete", leased, b"", put + 1)]
        assert await store.get(leased) is None
        assert await store.get(kept) is not None
        assert not await store.keep_alive(lease)
    finally:
        await store.aclose()


async def test_an_etcd_lease_expires_with_its_keys(shared_etcd_server: EtcdServer) -> None:
    store = EtcdStore([shared_etcd_server.url])
    key = "/lease-expiry/leased"
    try:
        # etcd's shortest lease is two seconds; it expires up to half a second late.
        lease = await store.grant_lease(2)
        put = await store.commit([], [Put(key, b"x", lease=lease)])
        assert put is not None
        async with watching(store, key, put + 1) as receive:
            events, _ = await next_events(receive, 1)
        assert [(event.kind, event.key) for event in events] == [("delete", key)]
        assert not await store.keep_alive(lease)
    finally:
        await store.aclose()
