"""Check that installed dependencies match the pins in pyproject.toml.

pip resolves conflicts silently: with a loose pin it installs purerpc 0.1.6,
which fails at import. This check fails loudly instead, naming the package.
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path


def pinned(pyproject: Path) -> dict[str, str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    pins: dict[str, str] = {}
    for requirement in project["dependencies"]:
        name, sep, version = requirement.partition("==")
        if sep:
            pins[name.strip()] = version.strip()
    return pins


def main() -> int:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    problems = []
    for name, version in pinned(pyproject).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed (pinned {version})")
            continue
        if installed != version:
            problems.append(f"{name} {installed} is installed, but {version} is pinned")
    try:
        import purerpc  # noqa: F401
    except Exception as error:  # any import failure is the problem being checked for
        problems.append(f"purerpc fails at import: {error!r}")
    for problem in problems:
        print(f"check_pins: {problem}", file=sys.stderr)
    if not problems:
        print("check_pins: every pinned dependency is installed at its pinned version")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
