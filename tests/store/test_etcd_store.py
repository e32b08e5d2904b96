"""What is particular to etcd: failures of the server, several endpoints, authentication."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
from etcd_servers import EtcdServer, free_ports
from store_support import DELIVERY_TIMEOUT_S, next_events, put_each, watching

from helios.config import StoreSettings
from helios.errors import ConfigError
from helios.store.etcd import EtcdStore, _prefix_range
from helios.store.factory import open_store
from helios.store.kv import Compacted, Event, Put, StoreUnavailable

TIMEOUT_MS = 500


class WatchBroke(Exception):
    """Raised by a watch's handler to end the watch, as a lost connection would."""


def test_a_prefix_range_ends_after_the_last_key_with_the_prefix() -> None:
    assert _prefix_range(b"/helios/") == (b"/helios/", b"/helios0")
    assert _prefix_range(b"a\xff\xff") == (b"a\xff\xff", b"b")
    assert _prefix_range(b"\xff") == (b"\xff", b"\0")
    assert _prefix_range(b"") == (b"\0", b"\0")


def test_the_description_shows_no_credentials() -> None:
    store = EtcdStore(["http://user:password@etcd.example:2379/"])
    assert store.description == "etcd http://etcd.example:2379"


def test_endpoints_must_be_urls() -> None:
    with pytest.raises(ConfigError, match="etcd:2379"):
        EtcdStore(["etcd:2379"])
    with pytest.raises(ConfigError):
        EtcdStore([])


async def test_calls_fail_at_once_while_etcd_is_down_and_work_once_it_is_back(
    etcd_server: EtcdServer,
) -> None:
    store = EtcdStore([etcd_server.url], timeout_ms=TIMEOUT_MS)
    try:
        revision = await store.commit([], [Put("/a", b"1")])
        etcd_server.kill()
        for call in (store.get("/a"), store.commit([], [Put("/a", b"2")]), store.ping()):
            with trio.fail_after(TIMEOUT_MS / 1000 * 2), pytest.raises(StoreUnavailable):
                await call
        etcd_server.start()
        entry = await store.get("/a")
        assert entry is not None and (entry.value, entry.mod_revision) == (b"1", revision)
        await store.ping()
    finally:
        await store.aclose()


async def test_calls_to_an_etcd_that_does_not_answer_time_out(etcd_server: EtcdServer) -> None:
    store = EtcdStore([etcd_server.url], timeout_ms=TIMEOUT_MS)
    try:
        await store.ping()
        etcd_server.pause()
        try:
            with trio.fail_after(2), pytest.raises(StoreUnavailable, match="within 500 ms"):
                await store.get("/a")
            with trio.fail_after(2), pytest.raises(StoreUnavailable, match="within 500 ms"):
                await store.watch("/", 1, lambda events, revision: None)
        finally:
            etcd_server.resume()
        assert await store.get("/a") is None
    finally:
        await store.aclose()


async def test_a_watch_raises_store_unavailable_when_etcd_dies(etcd_server: EtcdServer) -> None:
    store = EtcdStore([etcd_server.url], timeout_ms=TIMEOUT_MS)
    try:
        revision = await store.commit([], [Put("/w/a", b"1")])
        assert revision is not None
        with (
            pytest.RaisesGroup(StoreUnavailable),
            trio.fail_after(DELIVERY_TIMEOUT_S),
        ):
            async with watching(store, "/w/", revision) as receive:
                await next_events(receive, 1)
                etcd_server.kill()
                await receive.receive()
    finally:
        await store.aclose()


async def test_a_watch_after_a_forced_compaction_raises_compacted(
    etcd_server: EtcdServer,
) -> None:
    store = EtcdStore([etcd_server.url], timeout_ms=TIMEOUT_MS)
    try:
        first = etcd_server.put("/c/a", "1")
        etcd_server.put("/c/a", "2")
        compacted = etcd_server.compact()
        with pytest.raises(Compacted) as raised, trio.fail_after(DELIVERY_TIMEOUT_S):
            await store.watch("/c/", first, lambda events, revision: None)
        assert raised.value.compact_revision == compacted
    finally:
        await store.aclose()


async def test_the_next_endpoint_serves_when_one_refuses_connections(
    etcd_server: EtcdServer,
) -> None:
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    store = EtcdStore([dead, etcd_server.url], timeout_ms=TIMEOUT_MS)
    try:
        assert store.description == f"etcd {dead},{etcd_server.url}"
        assert await store.commit([], [Put("/e", b"1")]) is not None
        async with watching(store, "/e", 1) as receive:
            events, _ = await next_events(receive, 1)
        assert [event.key for event in events] == ["/e"]
    finally:
        await store.aclose()

    everything_dead = EtcdStore([dead], timeout_ms=TIMEOUT_MS)
    try:
        with pytest.raises(StoreUnavailable, match="cannot connect"):
            await everything_dead.get("/e")
    finally:
        await everything_dead.aclose()


async def test_with_authentication_on_the_store_logs_in_and_again_when_its_token_dies(
    etcd_server: EtcdServer,
) -> None:
    etcd_server.enable_auth("secret")
    settings = StoreSettings(
        etcd_endpoints=[etcd_server.url],
        etcd_username="root",
        etcd_password="secret",
        timeout_ms=TIMEOUT_MS * 4,
    )
    async with open_store(settings) as store:
        assert isinstance(store, EtcdStore)
        revision = await store.commit([], [Put("/auth/a", b"1")])
        assert revision is not None
        async with watching(store, "/auth/", revision) as receive:
            await next_events(receive, 1)
        # A token etcd no longer knows: the store logs in again.
        etcd_server.invalidate_tokens()
        entry = await store.get("/auth/a")
        assert entry is not None and entry.value == b"1"
        etcd_server.restart()
        assert await store.commit([], [Put("/auth/b", b"2")]) is not None

    for username, password in (("root", "wrong"), ("", "")):
        settings.etcd_username, settings.etcd_password = username, password
        async with open_store(settings) as store:
            with pytest.raises(StoreUnavailable, match="etcd refused"):
                await store.get("/auth/a")


async def test_a_watch_broken_during_a_long_catch_up_resumes_without_losing_a_change(
    shared_etcd_server: EtcdServer,
) -> None:
    """Catching up, etcd sends 1000 revisions a message, each headed with its latest revision."""
    store = EtcdStore([shared_etcd_server.url], timeout_ms=2000)
    prefix = "/catch-up/"
    try:
        revisions = await put_each(store, [f"{prefix}{i:04d}" for i in range(1500)])
        first: list[tuple[list[Event], int]] = []

        def first_message_only(events: list[Event], revision: int) -> None:
            first.append((events, revision))
            raise WatchBroke

        with pytest.raises(WatchBroke), trio.fail_after(DELIVERY_TIMEOUT_S):
            await store.watch(prefix, revisions[0], first_message_only)
        [(events, revision)] = first
        # The first message stopped short of the history...
        assert len(events) < len(revisions)
        # ...and the watcher got as far as its last event, not the header's revision.
        assert revision == events[-1].mod_revision

        async with watching(store, prefix, revision + 1) as receive:
            rest, last = await next_events(receive, len(revisions) - len(events))
        assert [event.mod_revision for event in events + rest] == revisions
        assert last == revisions[-1]
    finally:
        await store.aclose()


async def test_a_quiet_watch_moves_on_with_etcds_progress_notifications(
    etcd_server_factory: Callable[..., EtcdServer],
) -> None:
    etcd = etcd_server_factory("--experimental-watch-progress-notify-interval", "100ms")
    store = EtcdStore([etcd.url], timeout_ms=TIMEOUT_MS)
    try:
        async with watching(store, "/quiet/", etcd.revision() + 1) as receive:
            elsewhere = await store.commit([], [Put("/busy/a", b"1")])
            assert elsewhere is not None
            with trio.fail_after(DELIVERY_TIMEOUT_S):
                while True:
                    events, revision = await receive.receive()
                    assert events == []
                    if revision >= elsewhere:
                        break
        # A watch resumed from there sees the next change under its prefix.
        mine = await store.commit([], [Put("/quiet/a", b"1")])
        async with watching(store, "/quiet/", revision + 1) as receive:
            events, _ = await next_events(receive, 1)
        assert [(event.key, event.mod_revision) for event in events] == [("/quiet/a", mine)]
    finally:
        await store.aclose()
