"""Fixtures of the tracing tests: an OTLP receiver, and real ``helios`` processes exporting to it.

The launchers come from the end-to-end, Redis and store tests (``start_helios``,
``redis_server``, ``etcd_server``); their directories are put on ``sys.path`` so
that their modules import by file name, as they do in their own directories.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent.parent
for _directory in (_TESTS / "e2e", _TESTS / "redis", _TESTS / "store"):
    if str(_directory) not in sys.path:
        sys.path.insert(0, str(_directory))

from e2e_support import HeliosProcess, assert_stopped_cleanly, start_helios  # noqa: E402
from etcd_servers import etcd_server, etcd_server_factory  # noqa: E402, F401
from otlp_receiver import OtlpReceiver, otlp_receiver  # noqa: E402
from redis_servers import redis_server, redis_server_factory  # noqa: E402, F401


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as running:
        yield running


@pytest.fixture(autouse=True)
def no_tracing_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' own OTEL_* variables must not reach the processes they start."""
    import os

    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def helios_factory(tmp_path: Path) -> Iterator[Callable[..., HeliosProcess]]:
    """Starts ``helios`` processes (see ``start_helios``); each must exit 0 on SIGTERM."""
    started: list[HeliosProcess] = []

    def start(**options: object) -> HeliosProcess:
        helios = start_helios(tmp_path / f"helios-{len(started)}", **options)  # type: ignore[arg-type]
        started.append(helios)
        return helios

    yield start
    codes = [(helios, helios.stop()) for helios in started]
    for helios, code in codes:
        assert_stopped_cleanly(helios, code)
