"""Fixtures of the store tests: the three stores, each fresh per test, and real etcd servers.

``store_case`` is parametrized over the memory store, the file store (in the
test's temporary directory) and the etcd store (on one etcd shared by the
session, under a key prefix of the test's own). Contract tests take it and
must not assume absolute revisions: other tests' writes to the shared etcd
bump them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from etcd_servers import (  # noqa: F401 - fixtures, found by pytest by name
    etcd_server,
    etcd_server_factory,
    shared_etcd_server,
)
from store_support import StoreCase, open_store_case


@pytest.fixture(params=["memory", "file", "etcd"])
async def store_case(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreCase]:
    """Each of the three stores, fresh (etcd: a fresh prefix on the shared server)."""
    etcd = request.getfixturevalue("shared_etcd_server") if request.param == "etcd" else None
    case = await open_store_case(request.param, tmp_path, etcd)
    try:
        yield case
    finally:
        await case.store.aclose()
