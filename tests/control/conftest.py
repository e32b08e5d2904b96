"""The control plane's REST API in process: a MemoryStore, a ControlPlane, Quart's test client.

A real etcd, for the tests that need one, comes from the store tests' fixtures.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from control_support import ADMIN_KEY, WALL_CLOCK, Api, CountingStore

from helios.control.plane import ControlPlane
from helios.control.rest import create_app
from helios.gateway.auth import KeyRing

_STORE_TESTS = Path(__file__).resolve().parent.parent / "store"
if str(_STORE_TESTS) not in sys.path:
    sys.path.insert(0, str(_STORE_TESTS))
from etcd_servers import shared_etcd_server  # noqa: E402, F401


@pytest.fixture
def store() -> CountingStore:
    return CountingStore()


@pytest.fixture
def plane(store: CountingStore) -> ControlPlane:
    return ControlPlane(store, wall_clock=lambda: WALL_CLOCK)


@pytest.fixture
def api(plane: ControlPlane, store: CountingStore) -> Api:
    app = create_app(plane, KeyRing([ADMIN_KEY]))
    return Api(app.test_client(), store)
