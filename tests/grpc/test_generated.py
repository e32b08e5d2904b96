"""The committed generated code is exactly what the protos generate."""

from __future__ import annotations

from pathlib import Path

from helios.tools.generate_protos import OUTPUT, generate


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
