"""The control plane's REST API in process: a MemoryStore, a ControlPlane, Quart's test client."""

from __future__ import annotations

import pytest
from control_support import ADMIN_KEY, WALL_CLOCK, Api, CountingStore

from helios.control.plane import ControlPlane
from helios.control.rest import create_app
from helios.gateway.auth import KeyRing


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
