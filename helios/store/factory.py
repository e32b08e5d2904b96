"""The key-value store the configuration asks for: etcd, or the embedded file store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from helios.config import StoreSettings
from helios.store.kv import KeyValueStore

if TYPE_CHECKING:
    from helios.tracing import Tracing


@asynccontextmanager
async def open_store(
    settings: StoreSettings, *, tracing: Tracing | None = None
) -> AsyncIterator[KeyValueStore]:
    """The store in etcd when endpoints are set, else the file store at ``settings.file``.

    ``tracing``: give each etcd call a span.

    Raises :class:`~helios.errors.ConfigError` when the store file is not
    usable. etcd is not contacted until the first call. The store is closed
    on exit.
    """
    store: KeyValueStore
    if settings.etcd_endpoints:
        from helios.store.etcd import EtcdStore

        store = EtcdStore(
            settings.etcd_endpoints,
            username=settings.etcd_username,
            password=settings.etcd_password,
            timeout_ms=settings.timeout_ms,
            tracing=tracing,
        )
    else:
        from helios.store.file import FileStore

        store = await FileStore.open(settings.file)
    try:
        yield store
    finally:
        await store.aclose()
