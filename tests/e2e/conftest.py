"""Fixtures of the end-to-end tests: real ``helios`` processes on loopback ports."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_support import HeliosProcess, assert_stopped_cleanly, start_helios

# Real etcd servers, from the store tests.
_STORE_TESTS = Path(__file__).resolve().parent.parent / "store"
if str(_STORE_TESTS) not in sys.path:
    sys.path.insert(0, str(_STORE_TESTS))
from etcd_servers import etcd_server, etcd_server_factory  # noqa: E402, F401


@pytest.fixture
def helios_factory(tmp_path: Path) -> Iterator[Callable[..., HeliosProcess]]:
    """Starts ``helios`` processes (see ``start_helios``); each must exit 0 on SIGTERM."""
    started: list[HeliosProcess] = []

    def start(**options: object) -> HeliosProcess:
        directory = tmp_path / f"helios-{len(started)}"
        helios = start_helios(directory, **options)  # type: ignore[arg-type]
        started.append(helios)
        return helios

    yield start

    codes = [(helios, helios.stop()) for helios in started if not helios.killed]
    for helios, code in codes:
        assert_stopped_cleanly(helios, code)
