"""Start-up of the real process: bad settings stop it with one clear line; --help, --version."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from e2e_support import API_KEY, clean_environment, free_ports, helios_command

import helios

pytestmark = pytest.mark.slow

# A process that fails to start must say so well within this.
QUICKLY_SECONDS = 10.0


def run_helios(
    *args: str, settings: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    http_port, metrics_port = free_ports(2)
    command = helios_command(
        "--role", "all", "--http-port", str(http_port), "--metrics-port", str(metrics_port), *args
    )
    environment = clean_environment({"HELIOS_ALLOWED_API_KEYS": API_KEY, **(settings or {})})
    started = time.monotonic()
    result = subprocess.run(
        command,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=QUICKLY_SECONDS,
    )
    assert time.monotonic() - started < QUICKLY_SECONDS
    return result


def assert_fails_with_one_line(result: subprocess.CompletedProcess[str], *names: str) -> str:
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for name in names:
        assert name in lines[0], lines[0]
    assert result.stdout == ""
    return lines[0]


def test_unknown_helios_environment_variable() -> None:
    result = run_helios(settings={"HELIOS_FOO": "1"})
    assert_fails_with_one_line(result, "HELIOS_FOO")


def test_port_out_of_range_on_the_command_line() -> None:
    result = run_helios("--set", "http.port=70000")
    assert_fails_with_one_line(result, "http.port", "70000")


def test_unknown_setting_on_the_command_line() -> None:
    result = run_helios("--set", "http.bogus=1")
    assert_fails_with_one_line(result, "http.bogus")


@pytest.mark.parametrize(
    ("text", "name"),
    [("[http]\nbogus = 1\n", "http.bogus"), ("[nosuch]\nport = 1\n", "nosuch")],
    ids=["unknown-key", "unknown-section"],
)
def test_unknown_key_in_the_config_file(tmp_path: Path, text: str, name: str) -> None:
    config = tmp_path / "helios.toml"
    config.write_text(text, encoding="utf-8")
    result = run_helios("--config", str(config))
    assert_fails_with_one_line(result, name)


def test_config_value_of_the_wrong_type(tmp_path: Path) -> None:
    config = tmp_path / "helios.toml"
    config.write_text('[http]\nidle_timeout_seconds = "soon"\n', encoding="utf-8")
    result = run_helios("--config", str(config))
    assert_fails_with_one_line(result, "http.idle_timeout_seconds", "soon")


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ('limit = 10\nwindow = "5 parsecs"\n', "policies[0].window"),
        ('limit = 10\nwindow = "-1s"\n', "policies[0].window"),
        ('limit = 10\nwindow = "1m"\nalgorithm = "leaky"\n', "policies[0].algorithm"),
        ('limit = 0\nwindow = "1m"\n', "policies[0].limit"),
        ('limit = 10\nwindow = "1m"\ncolour = "blue"\n', "policies[0].colour"),
    ],
    ids=["window-word", "window-negative", "algorithm", "limit-zero", "unknown-field"],
)
def test_bad_policy_file(tmp_path: Path, policy: str, field: str) -> None:
    policies = tmp_path / "policies.toml"
    policies.write_text(
        f'[[policies]]\ntenant = "acme"\nresource = "demo"\n{policy}', encoding="utf-8"
    )
    result = run_helios(settings={"HELIOS_POLICY_FILE": str(policies)})
    line = assert_fails_with_one_line(result, field)
    assert str(policies) in line


def test_missing_policy_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    result = run_helios("--policies", str(missing))
    assert_fails_with_one_line(result, str(missing))


def test_port_already_in_use_names_the_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_helios("--http-port", str(port))
    line = assert_fails_with_one_line(result)
    assert str(port) in line or "http.port" in line, line


def test_missing_tls_certificate_names_the_file(tmp_path: Path) -> None:
    certificate = tmp_path / "missing-cert.pem"
    key = tmp_path / "missing-key.pem"
    result = run_helios(
        settings={
            "GATEWAY_TLS_ENABLED": "true",
            "GATEWAY_CERT_PATH": str(certificate),
            "GATEWAY_KEY_PATH": str(key),
        }
    )
    assert_fails_with_one_line(result, str(certificate))


def test_tls_enabled_without_certificate_paths() -> None:
    result = run_helios(settings={"GATEWAY_TLS_ENABLED": "true"})
    assert_fails_with_one_line(result, "http.tls_enabled")


def console_script() -> str:
    script = Path(sys.executable).with_name("helios")
    if script.exists():
        return str(script)
    found = shutil.which("helios")
    if found is None:
        pytest.fail("the helios console script is not installed")
    return found


@pytest.mark.parametrize("launcher", ["console-script", "python-m"])
def test_help(launcher: str) -> None:
    command = [console_script()] if launcher == "console-script" else helios_command()
    result = subprocess.run(
        [*command, "--help"],
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=QUICKLY_SECONDS,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: helios")
    for option in ("--role", "--config", "--policies", "--set", "--version"):
        assert option in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("launcher", ["console-script", "python-m"])
def test_version(launcher: str) -> None:
    command = [console_script()] if launcher == "console-script" else helios_command()
    result = subprocess.run(
        [*command, "--version"],
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=QUICKLY_SECONDS,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"helios {helios.__version__}"
