"""The container image and what must stay out of it: Dockerfile, .dockerignore, secrets.

There is no Docker engine where these tests run, so the image is checked as
text: a pinned slim base, two stages, a non-root numeric user, a health check
on /ready and the ``helios`` entry point.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from deploy_support import DEPLOY, REPO

DOCKERFILE = DEPLOY / "Dockerfile"
PLACEHOLDER = "CHANGE_ME"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    logical = re.sub(r"\\\n", " ", text)
    found = []
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        found.append((instruction.upper(), arguments.strip()))
    return found


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (instruction, _) in enumerate(steps) if instruction == "FROM")
    return steps[last_from:]


def test_two_stages_on_a_pinned_slim_python() -> None:
    steps = instructions()
    froms = [arguments for instruction, arguments in steps if instruction == "FROM"]
    assert len(froms) >= 2, "a build stage and a runtime stage"
    assert " AS build" in froms[0]
    defaults = dict(
        arguments.split("=", 1)
        for instruction, arguments in steps
        if instruction == "ARG" and "=" in arguments
    )
    for line in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], line.split()[0])
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?", image), image
    # The build stage makes the wheels; the runtime installs them without an index.
    assert any(
        instruction == "RUN" and "pip wheel" in arguments for instruction, arguments in steps
    )
    runtime_runs = [arguments for instruction, arguments in final_stage() if instruction == "RUN"]
    assert any("from=build" in run and "--no-index" in run for run in runtime_runs)


def test_the_final_stage_runs_as_a_numeric_non_root_user() -> None:
    users = [arguments for instruction, arguments in final_stage() if instruction == "USER"]
    assert users, "the runtime stage sets USER"
    user = users[-1].split(":")[0]
    assert user.isdigit(), f"a numeric UID, so that runAsNonRoot can check it: {user!r}"
    assert int(user) != 0


def test_entry_point_ports_and_health_check() -> None:
    steps = dict(final_stage())
    assert shlex.split(steps["ENTRYPOINT"].strip("[]").replace(",", " ")) == ["helios"]
    exposed = {int(port.split("/")[0]) for port in steps["EXPOSE"].split()}
    assert exposed >= {8080, 9080, 2112, 8081, 9081, 2113}
    check = steps["HEALTHCHECK"]
    assert "python" in check and "/ready" in check and "curl" not in check


def test_dockerignore_keeps_the_context_to_what_the_image_needs() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "everything is excluded first, then what the build copies"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for instruction, arguments in instructions():
        if instruction == "COPY" and "--from" not in arguments:
            copied.update(arguments.split()[:-1])
    assert copied, "the Dockerfile copies the sources"
    for source in copied:
        assert source.rstrip("/") in included, f"{source} is copied but left out of the context"
        assert (REPO / source).exists(), source
    assert not any(entry.startswith("deploy") for entry in included)


def test_the_grafana_credentials_example_holds_a_placeholder_only() -> None:
    example = DEPLOY / ".env.grafana.example"
    values = dict(
        line.split("=", 1)
        for line in example.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    )
    assert set(values) == {"GF_SECURITY_ADMIN_USER", "GF_SECURITY_ADMIN_PASSWORD"}
    assert values["GF_SECURITY_ADMIN_PASSWORD"] == PLACEHOLDER
    # No other file in deploy/ sets the password (the real one is ignored by git).
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.name not in (".env.grafana", example.name):
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"GF_SECURITY_ADMIN_PASSWORD\s*[=:]", text), path


def test_git_ignores_the_grafana_credentials() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")

    def ignored(path: str) -> bool:
        result = subprocess.run(
            ["git", "check-ignore", "--no-index", "-q", path], cwd=REPO, check=False
        )
        assert result.returncode in (0, 1)
        return result.returncode == 0

    assert ignored("deploy/.env.grafana")
    assert not ignored("deploy/.env.grafana.example")


def test_the_wheel_holds_every_file_helios_reads_and_runs_from_it(tmp_path: Path) -> None:
    """The image installs Helios from its wheel: nothing it reads may be missing there.

    The wheel is built as the image's build stage builds it (from a copy of
    what the Dockerfile copies), unpacked, and a STRONG-mode gateway's
    modules and the default policies are loaded from it alone.
    """
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "helios", source / "helios", ignore=shutil.ignore_patterns("__pycache__")
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("helios-*.whl")
    installed = tmp_path / "installed"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(installed)
        packaged = set(archive.namelist())
    # Every file that is not Python source must be in the wheel, but for type stubs.
    data = {
        path.relative_to(REPO).as_posix()
        for path in (REPO / "helios").rglob("*")
        if path.is_file() and path.suffix not in {".py", ".pyc", ".pyi"}
    }
    assert data, "helios/ holds data files (Lua scripts, default policies)"
    assert data <= packaged, f"left out of the wheel: {sorted(data - packaged)}"
    # The STRONG backend reads its Lua script when imported.
    probe = (
        "import helios, helios.backends.redis.strong;"
        "from helios.store.policy_file import load_policies;"
        "assert len(load_policies(None)[0]);"
        "print(helios.__file__)"
    )
    # Run from the unpacked wheel alone: not the checkout, not its editable install.
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            f"import sys; sys.path.insert(0, {str(installed)!r}); {probe}",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.stdout.strip().startswith(str(installed))
