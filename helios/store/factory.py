"""The key-value store the configuration asks for: etcd, or the embedded file store."""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from helios.config import StoreSettings
from helios.errors import ConfigError
from helios.store.kv import KeyValueStore

if TYPE_CHECKING:
    from helios.tracing import Tracing


def etcd_tls(settings: StoreSettings) -> ssl.SSLContext | None:
    """The TLS context for etcd's https:// endpoints, or None for the defaults."""
    if not (settings.etcd_ca_path or settings.etcd_cert_path):
        return None
    for setting, path in (
        ("store.etcd_ca_path", settings.etcd_ca_path),
        ("store.etcd_cert_path", settings.etcd_cert_path),
        ("store.etcd_key_path", settings.etcd_key_path),
    ):
        if path and not os.path.isfile(path):
            raise ConfigError(f"{setting}: no such file {path!r}")
    try:
        context = ssl.create_default_context(cafile=settings.etcd_ca_path or None)
        if settings.etcd_cert_path:
            context.load_cert_chain(settings.etcd_cert_path, settings.etcd_key_path)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"cannot load the TLS files for etcd: {error}") from None
    return context


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
            tls=etcd_tls(settings),
            tracing=tracing,
        )
    else:
        from helios.store.file import FileStore

        store = await FileStore.open(settings.file)
    try:
        yield store
    finally:
        await store.aclose()
