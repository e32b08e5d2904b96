"""A real etcd for tests: one member on free loopback ports, stoppable and restartable.

:func:`start_etcd` starts ``etcd`` with its data in a given directory, waits
(with a bound) until it answers ``/health``, and returns an :class:`EtcdServer`
that can stop it, kill it, freeze it (SIGSTOP), and start it again on the SAME
ports with the SAME data: what a test needs to take etcd away from running
gateways and give it back. It also forces compactions and reads and writes
keys, through etcd's JSON gateway with the standard library, deliberately not
through the client under test.

Fixtures (``etcd_server``, ``etcd_server_factory``, and the session-wide
``shared_etcd_server``) are at the bottom. Use them from another test
directory by putting this one on ``sys.path`` in that directory's
``conftest.py`` and importing them there::

    _STORE_TESTS = Path(__file__).resolve().parent.parent / "store"
    if str(_STORE_TESTS) not in sys.path:
        sys.path.insert(0, str(_STORE_TESTS))
    from etcd_servers import etcd_server, etcd_server_factory  # noqa: E402, F401
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# etcd starts in ~0.3 s on an idle machine; the bounds leave room for a loaded one.
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


def require_etcd() -> None:
    """Skip the test when ``etcd`` is not installed."""
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed")


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass
class EtcdServer:
    """One single-member etcd on loopback ports, with its data in ``directory``.

    ``start`` may be called again after ``stop`` or ``kill``: etcd comes back
    on the same ports with the data it had (``wipe`` first for an empty one).
    """

    client_port: int
    peer_port: int
    directory: Path
    name: str = "helios-test"
    #: More command-line flags for etcd.
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    starts: int = 0
    #: A token for ``Authorization`` once ``enable_auth`` has run.
    root_token: str | None = field(default=None, repr=False)
    _root_password: str = field(default="", repr=False)

    @property
    def url(self) -> str:
        """The client URL, ``http://127.0.0.1:<client port>``."""
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "etcd.log"

    def log(self) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def command(self) -> list[str]:
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        return [
            "etcd",
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.url,
            "--advertise-client-urls",
            self.url,
            "--listen-peer-urls",
            peer_url,
            "--initial-advertise-peer-urls",
            peer_url,
            "--initial-cluster",
            f"{self.name}={peer_url}",
            "--initial-cluster-state",
            "new",
            "--log-level",
            "warn",
            "--logger",
            "zap",
            *self.extra_args,
        ]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the process and wait until it reports itself healthy."""
        assert not self.running, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"etcd on port {self.client_port} exited:\n{self.log()}")
            if self.healthy():
                return
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"etcd on port {self.client_port} did not start:\n{self.log()}")

    def healthy(self) -> bool:
        """Whether ``/health`` answers that the member has a leader and serves."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1.0) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL after ``STOP_TIMEOUT_S``. Does nothing if not running."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL: etcd vanishes without closing anything gracefully."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait()

    def restart(self) -> None:
        """Kill, then start again on the same ports with the same data."""
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: etcd keeps its connections open but answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def wipe(self) -> None:
        """Delete the data directory (etcd must not be running)."""
        assert not self.running, "stop etcd before wiping its data"
        shutil.rmtree(self.data_dir, ignore_errors=True)

    # Requests through etcd's JSON gateway, for set-up and checks.

    def call(self, path: str, body: dict[str, Any], *, timeout_s: float = 5.0) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>`` and return the decoded answer."""
        headers = {"Content-Type": "application/json"}
        if self.root_token is not None:
            headers["Authorization"] = self.root_token
        request = urllib.request.Request(
            f"{self.url}/v3/{path}", data=json.dumps(body).encode(), headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                answer: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise AssertionError(
                f"etcd answered {path} with {error.code}: {error.read()!r}"
            ) from None
        return answer

    def revision(self) -> int:
        """The store's current revision."""
        return int(self.call("kv/range", {"key": _b64("\0")})["header"]["revision"])

    def put(self, key: str, value: str) -> int:
        """Write one key; returns the new revision."""
        answer = self.call("kv/put", {"key": _b64(key), "value": _b64(value)})
        return int(answer["header"]["revision"])

    def get(self, key: str) -> str | None:
        answer = self.call("kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs", [])
        return base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None

    def compact(self, revision: int | None = None) -> int:
        """Forget the history up to ``revision`` (default: the current one); returns it."""
        if revision is None:
            revision = self.revision()
        self.call("kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def enable_auth(self, password: str) -> None:
        """Turn authentication on with a ``root`` user; later helper calls use its token."""
        self.call("auth/user/add", {"name": "root", "password": password})
        self.call("auth/role/add", {"name": "root"})
        self.call("auth/user/grant", {"user": "root", "role": "root"})
        self.call("auth/enable", {})
        self._root_password = password
        answer = self.call("auth/authenticate", {"name": "root", "password": password})
        self.root_token = str(answer["token"])

    def invalidate_tokens(self) -> None:
        """Make etcd forget every token it handed to ``root`` (clients must log in again).

        Setting a user's password, even to the same one, drops the user's tokens.
        """
        self.call("auth/user/changepw", {"name": "root", "password": self._root_password})
        self.root_token = None
        self.root_token = str(
            self.call("auth/authenticate", {"name": "root", "password": self._root_password})[
                "token"
            ]
        )


def start_etcd(directory: Path, *extra_args: str) -> EtcdServer:
    """Start one empty etcd member on free loopback ports, with more flags if given."""
    client_port, peer_port = free_ports(2)
    server = EtcdServer(client_port, peer_port, directory, extra_args=extra_args)
    server.start()
    return server


# Fixtures: conftest.py files import these (see the module docstring).


@pytest.fixture
def etcd_server_factory(tmp_path: Path) -> Iterator[Callable[..., EtcdServer]]:
    """Starts fresh etcd members (with more flags if given); all stop at teardown."""
    require_etcd()
    started: list[EtcdServer] = []

    def start(*extra_args: str) -> EtcdServer:
        server = start_etcd(tmp_path / f"etcd-{len(started)}", *extra_args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def etcd_server(etcd_server_factory: Callable[..., EtcdServer]) -> EtcdServer:
    """One fresh, empty etcd on free loopback ports, for a test that may kill it."""
    return etcd_server_factory()


@pytest.fixture(scope="session")
def shared_etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for the whole session; tests keep to keys of their own and must not stop it."""
    require_etcd()
    server = start_etcd(tmp_path_factory.mktemp("etcd-shared"))
    yield server
    server.stop()
