"""The control plane's gRPC API served in-process over a memory store, and a grpcio client."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import ExitStack
from importlib import resources
from pathlib import Path
from types import ModuleType

import grpc
import pytest
import trio
from control_grpc_support import ADMIN_KEY, NOW, Control, StartControl

from helios.control.grpc import ControlGrpcServer
from helios.control.plane import ControlPlane
from helios.gateway.auth import KeyRing
from helios.store.kv import MemoryStore

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def control_stubs(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """grpcio stubs for ControlService generated now by grpc_tools, on the committed messages."""
    out = tmp_path_factory.mktemp("grpcio_control")
    well_known = resources.files("grpc_tools") / "_proto"
    proto = "helios/v1/control.proto"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"-I{well_known}",
            f"--grpc_python_out={out}",
            proto,
        ],
        check=True,
    )
    path = out / proto.replace(".proto", "_pb2_grpc.py")
    text = re.sub(
        r"^from helios\.", "from helios.grpc.generated.helios.", path.read_text(), flags=re.M
    )
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("grpcio_control_pb2_grpc", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def start_control(
    nursery: trio.Nursery, control_stubs: ModuleType
) -> AsyncIterator[StartControl]:
    """Start a server over ``store`` (a new MemoryStore by default) with ``admin_keys``."""
    with ExitStack() as channels:

        async def start(
            store: MemoryStore | None = None, admin_keys: KeyRing | list[str] | None = None
        ) -> Control:
            store = store if store is not None else MemoryStore()
            plane = ControlPlane(store, wall_clock=lambda: NOW)
            server = ControlGrpcServer(plane, admin_keys if admin_keys is not None else [ADMIN_KEY])
            address: tuple[str, int] = await nursery.start(server.serve, "127.0.0.1", 0)
            channel = channels.enter_context(grpc.insecure_channel(f"{address[0]}:{address[1]}"))
            stub = control_stubs.ControlServiceStub(channel)
            return Control(server, plane, store, address, stub)

        yield start


@pytest.fixture
async def control(start_control: StartControl) -> Control:
    return await start_control()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # purerpc never closes the per-stream anyio channels it opens; their
    # ResourceWarnings surface at garbage collection, in whichever test runs.
    for item in items:
        if "tests/control_grpc" in str(item.path):
            item.add_marker(pytest.mark.filterwarnings("ignore::ResourceWarning"))
            item.add_marker(
                pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
            )
