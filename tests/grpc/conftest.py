"""A gateway served over gRPC in-process, and clients for it (purerpc and grpcio)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio

from helios.grpc import serve_grpc
from tests.unit.support import make_gateway

ROOT = Path(__file__).resolve().parents[2]

POLICIES = (
    {"tenant": "acme", "resource": "demo", "algorithm": "fixed_window", "limit": 3, "window": "1m"},
    {
        "tenant": "acme",
        "resource": "remote_address=*",
        "algorithm": "fixed_window",
        "limit": 10,
        "window": "1m",
    },
    {
        "tenant": "acme",
        "resource": "path=*",
        "algorithm": "fixed_window",
        "limit": 1,
        "window": "1m",
    },
    {
        "tenant": "acme",
        "resource": "shadow",
        "algorithm": "fixed_window",
        "limit": 1,
        "window": "1m",
        "shadow": True,
    },
)


@pytest.fixture
async def grpc_address(nursery: trio.Nursery) -> tuple[str, int]:
    gateway = make_gateway(*POLICIES)
    address: tuple[str, int] = await nursery.start(serve_grpc, gateway, "127.0.0.1", 0)
    return address


@pytest.fixture(scope="session")
def grpcio_stubs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModuleType]:
    """grpcio stubs generated now by grpc_tools, using the committed messages."""
    out = tmp_path_factory.mktemp("grpcio")
    well_known = resources.files("grpc_tools") / "_proto"
    protos = ["helios/v1/ratelimit.proto", "envoy/service/ratelimit/v3/rls.proto"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"-I{well_known}",
            f"--grpc_python_out={out}",
            *protos,
        ],
        check=True,
    )
    modules = {}
    for proto in protos:
        path = out / proto.replace(".proto", "_pb2_grpc.py")
        text = re.sub(
            r"^from (helios|envoy)\.",
            r"from helios.grpc.generated.\1.",
            path.read_text(),
            flags=re.MULTILINE,
        )
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(f"grpcio_{path.stem}_{len(modules)}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules[proto.split("/")[0]] = module
    return modules


@pytest.fixture
async def purerpc_channel(grpc_address: tuple[str, int]) -> AsyncIterator[Any]:
    import purerpc

    async with purerpc.insecure_channel(*grpc_address) as channel:
        yield channel


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # purerpc never closes the per-stream anyio channels it opens; their
    # ResourceWarnings surface at garbage collection, in whichever test runs.
    for item in items:
        if "tests/grpc" in str(item.path):
            item.add_marker(pytest.mark.filterwarnings("ignore::ResourceWarning"))
            item.add_marker(
                pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
            )
