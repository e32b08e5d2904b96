"""Generate the Python code of Helios's gRPC protos into helios/grpc/generated.

Run ``python -m helios.tools.generate_protos`` after changing a file under
``proto/``, and commit the result; ``tests/grpc/test_generated.py`` fails
when the committed code and the protos disagree.

protoc names Python modules after the proto's path (``helios/v1/x.proto``
becomes the module ``helios.v1.x_pb2``), which would clash with the
``helios`` package itself. The generated modules therefore live below
``helios.grpc.generated`` and their imports of one another are rewritten to
match; the protos keep their published paths and packages, so the
descriptors registered at run time carry Envoy's own names.

Needs grpcio-tools (protoc and the well-known types) and purerpc's
``protoc-gen-purerpc`` plugin. protoc refuses a plugin that does not declare
support for proto3 ``optional`` fields (``control.proto`` has them), and
purerpc's does not declare it, although it only writes services and never
looks at fields. protoc therefore runs it through this module
(``--protoc-plugin``), which passes the request on and adds the declaration
to the response.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"
OUTPUT = ROOT / "helios" / "grpc" / "generated"
PACKAGE = "helios.grpc.generated"

# Top-level proto packages whose generated modules are moved below PACKAGE.
_MOVED = ("helios", "envoy")
_IMPORT = re.compile(rf"^(from|import) ({'|'.join(_MOVED)})\.", re.MULTILINE)


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    return sorted(proto_root.rglob("*.proto"))


def _plugin() -> str:
    """The path of protoc-gen-purerpc: beside this interpreter, or on PATH."""
    beside = Path(sys.executable).with_name("protoc-gen-purerpc")
    if beside.exists():
        return str(beside)
    found = shutil.which("protoc-gen-purerpc")
    if found is None:
        raise SystemExit("protoc-gen-purerpc not found; install purerpc")
    return found


def protoc_plugin() -> None:
    """Act as protoc-gen-purerpc, declaring support for proto3 ``optional`` fields."""
    from google.protobuf.compiler.plugin_pb2 import CodeGeneratorResponse

    request = sys.stdin.buffer.read()
    answer = subprocess.run(  # noqa: S603 - the plugin found beside this interpreter
        [_plugin()], input=request, stdout=subprocess.PIPE, check=True
    )
    response = CodeGeneratorResponse.FromString(answer.stdout)
    response.supported_features |= CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    sys.stdout.buffer.write(response.SerializeToString())


def _wrapper(directory: Path) -> Path:
    """An executable that runs :func:`protoc_plugin` (protoc wants a file to run)."""
    script = directory / "protoc-gen-purerpc"
    command = shlex.join([sys.executable, str(Path(__file__).resolve()), "--protoc-plugin"])
    script.write_text(f"#!/bin/sh\nexec {command}\n")
    script.chmod(0o755)
    return script


def generate(output: Path = OUTPUT, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Generate every proto under ``proto_root`` into ``output``; the files written."""
    well_known = resources.files("grpc_tools") / "_proto"
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    files = [str(path.relative_to(proto_root)) for path in proto_files(proto_root)]
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={proto_root}",
            f"--proto_path={well_known}",
            f"--plugin=protoc-gen-purerpc={_wrapper(Path(scratch))}",
            f"--python_out={output}",
            f"--pyi_out={output}",
            f"--purerpc_out={output}",
            *files,
        ]
        subprocess.run(command, check=True, cwd=proto_root)  # noqa: S603 - fixed arguments

    written = []
    for path in sorted(output.rglob("*.py*")):
        text = path.read_text()
        path.write_text(_IMPORT.sub(rf"\1 {PACKAGE}.\2.", text))
        written.append(path)
    for directory in [output, *sorted(p for p in output.rglob("*") if p.is_dir())]:
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text("")
            written.append(init)
    return sorted(written)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--protoc-plugin", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.protoc_plugin:
        protoc_plugin()
        return
    for path in generate(args.output):
        print(path.relative_to(args.output))


if __name__ == "__main__":
    main()
