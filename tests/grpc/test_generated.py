"""The committed generated code is exactly what the protos generate."""

from __future__ import annotations

from pathlib import Path

import pytest

from helios.tools.generate_protos import OUTPUT, PROTO_ROOT, generate, proto_files


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    generate(tmp_path / "generated")
    assert _tree(tmp_path / "generated") == _tree(OUTPUT), (
        "helios/grpc/generated is stale: run python -m helios.tools.generate_protos"
    )


@pytest.mark.parametrize(
    "proto", [str(path.relative_to(PROTO_ROOT)) for path in proto_files()], ids=str
)
def test_every_proto_has_its_modules(proto: str) -> None:
    stem = OUTPUT / proto.removesuffix(".proto")
    assert stem.with_name(stem.name + "_pb2.py").is_file()
    assert stem.with_name(stem.name + "_pb2.pyi").is_file()
    if "\nservice " in (PROTO_ROOT / proto).read_text():
        assert stem.with_name(stem.name + "_grpc.py").is_file()


def test_control_proto_is_generated() -> None:
    # The control plane's service, with its proto3 optional fields (which
    # purerpc's plugin needs help to accept).
    assert "helios/v1/control.proto" in {
        str(path.relative_to(PROTO_ROOT)) for path in proto_files()
    }
    from helios.grpc.generated.helios.v1 import control_grpc, control_pb2

    assert not control_pb2.Band().HasField("burst")
    assert hasattr(control_grpc, "ControlServiceStub")
