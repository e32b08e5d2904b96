"""``make demo`` and ``make demo-down``, run for real with a stand-in for ``docker``.

The Makefile and the credentials example are copied to a temporary directory,
so the working tree's deploy/.env.grafana is never touched. ``PATH`` holds
only the few tools the recipes use, plus (in some tests) a ``docker`` script
that records its arguments and succeeds.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from deploy_support import DEPLOY, REPO

# What the recipes call besides docker (echo, test and [ are shell built-ins).
TOOLS = ("od", "tr", "sed")

FAKE_DOCKER = """\
#!/bin/sh
echo "$*" >> "$DOCKER_LOG"
exit 0
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = tmp_path / "project"
    (root / "deploy").mkdir(parents=True)
    shutil.copy(REPO / "Makefile", root / "Makefile")
    shutil.copy(DEPLOY / ".env.grafana.example", root / "deploy" / ".env.grafana.example")
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found is not None, tool
        (tools / tool).symlink_to(found)
    return root


def install_fake_docker(project: Path) -> Path:
    docker = project.parent / "bin" / "docker"
    docker.write_text(FAKE_DOCKER, encoding="utf-8")
    docker.chmod(docker.stat().st_mode | stat.S_IXUSR)
    return project.parent / "docker.log"


def make(project: Path, target: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("make")
    assert executable is not None
    environment = {
        "PATH": str(project.parent / "bin"),
        "DOCKER_LOG": str(project.parent / "docker.log"),
        "HOME": os.environ.get("HOME", "/"),
    }
    return subprocess.run(
        [executable, "--no-print-directory", target],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def credentials(project: Path) -> dict[str, str]:
    text = (project / "deploy" / ".env.grafana").read_text(encoding="utf-8")
    return dict(line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")


def test_demo_without_docker_says_so_and_fails(project: Path) -> None:
    result = make(project, "demo")
    assert result.returncode != 0
    assert "docker compose" in result.stdout + result.stderr
    assert "make run" in result.stdout
    assert not (project / "deploy" / ".env.grafana").exists()


def test_demo_down_without_docker_fails(project: Path) -> None:
    result = make(project, "demo-down")
    assert result.returncode != 0
    assert "docker compose" in result.stdout + result.stderr


def test_demo_makes_the_grafana_credentials_and_starts_compose(project: Path) -> None:
    log = install_fake_docker(project)
    result = make(project, "demo")
    assert result.returncode == 0, result.stdout + result.stderr

    assert log.read_text(encoding="utf-8").splitlines() == [
        "compose version",
        "compose -f deploy/docker-compose.yml up -d --build",
    ]
    values = credentials(project)
    assert values["GF_SECURITY_ADMIN_USER"] == "admin"
    password = values["GF_SECURITY_ADMIN_PASSWORD"]
    assert password != "CHANGE_ME"
    assert len(password) >= 32 and password.isalnum()
    # Readable by its owner only.
    assert stat.S_IMODE((project / "deploy" / ".env.grafana").stat().st_mode) == 0o600
    for url in (
        "http://127.0.0.1:8080",
        "http://127.0.0.1:8081",
        "http://127.0.0.1:9090",
        "http://127.0.0.1:3000",
        "http://127.0.0.1:16686",
    ):
        assert url in result.stdout

    # A second run keeps the password it made the first time.
    assert make(project, "demo").returncode == 0
    assert credentials(project)["GF_SECURITY_ADMIN_PASSWORD"] == password


def test_each_demo_gets_its_own_password(project: Path) -> None:
    install_fake_docker(project)
    assert make(project, "demo").returncode == 0
    first = credentials(project)["GF_SECURITY_ADMIN_PASSWORD"]
    (project / "deploy" / ".env.grafana").unlink()
    assert make(project, "demo").returncode == 0
    assert credentials(project)["GF_SECURITY_ADMIN_PASSWORD"] != first


def test_demo_down_stops_compose(project: Path) -> None:
    log = install_fake_docker(project)
    result = make(project, "demo-down")
    assert result.returncode == 0, result.stdout + result.stderr
    assert log.read_text(encoding="utf-8").splitlines()[-1] == (
        "compose -f deploy/docker-compose.yml down --volumes"
    )
