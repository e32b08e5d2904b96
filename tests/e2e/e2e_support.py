"""Running the real ``helios`` process, and talking raw HTTP/1.1 to it.

``start_helios`` launches ``python -m helios --role all`` on free loopback
ports with a clean environment, waits until ``/health`` answers, and returns a
:class:`HeliosProcess`. ``running_helios`` does the same as a context manager
that sends SIGTERM on exit and checks that the process exited 0.

``ResponseReader`` reads HTTP/1.1 responses off a trio stream without any
client library in between, so tests see exactly the bytes the server sent:
pipelined responses in order, ``connection: close``, and truncation.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio

T = TypeVar("T")

API_KEY = "test-key"
ADMIN_KEY = "admin-test-key"

# Bounds on waiting for the real process. Start-up takes about half a second.
START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 10.0

# Environment prefixes that configure helios; the tests' own environment must not leak in.
# Settings of a helios process: Helios's own, and OpenTelemetry's tracing variables.
_CONFIG_PREFIXES = ("HELIOS_", "GATEWAY_", "OTEL_")


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


_stores = itertools.count()


def clean_environment(settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any helios setting, plus ``settings``."""
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith(_CONFIG_PREFIXES)
    }
    # Listeners on ports of the system's choosing, so that processes never
    # collide, and an embedded store of their own.
    for setting in (
        "HELIOS_GRPC_PORT",
        "HELIOS_CONTROL_HTTP_PORT",
        "HELIOS_CONTROL_GRPC_PORT",
        "HELIOS_CONTROL_METRICS_PORT",
    ):
        environment[setting] = "0"
    environment["HELIOS_STORE_FILE"] = str(
        Path(tempfile.gettempdir()) / f"helios-test-store-{os.getpid()}-{next(_stores)}.json"
    )
    environment.update(settings or {})
    return environment


def within(seconds: float, probe: Callable[[], T | None]) -> T:
    """Poll ``probe`` until it returns something other than None, for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s")
        time.sleep(0.02)


def helios_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "helios", *args]


@dataclass
class HeliosProcess:
    """A running ``helios`` process and how to reach it."""

    process: subprocess.Popen[bytes]
    http_port: int
    metrics_port: int
    log_path: Path
    scheme: str = "http"
    verify: ssl.SSLContext | bool = True
    role: str = "all"
    control_port: int = 0
    # Set by a test that killed the process on purpose: it is not stopped cleanly.
    killed: bool = False
    control_scheme: str = "http"
    control_verify: ssl.SSLContext | bool = True

    def kill(self) -> None:
        self.killed = True
        self.process.kill()
        self.process.wait()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    @property
    def control_url(self) -> str:
        return f"{self.control_scheme}://127.0.0.1:{self.control_port}"

    @property
    def health_urls(self) -> list[tuple[str, ssl.SSLContext | bool]]:
        """What answers once the process is up: (URL, how to verify its certificate)."""
        urls: list[tuple[str, ssl.SSLContext | bool]] = []
        if self.role in ("gateway", "all"):
            urls.append((f"{self.url}/health", self.verify))
        if self.role in ("control", "all"):
            urls.append((f"{self.control_url}/health", self.control_verify))
        return urls

    def admin(self) -> httpx.Client:
        """A client of the control plane's REST API, with the admin key."""
        return httpx.Client(
            base_url=self.control_url,
            headers={"X-API-Key": ADMIN_KEY},
            verify=self.control_verify,
            timeout=5.0,
        )

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.verify, timeout=5.0)

    def async_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, verify=self.verify, timeout=5.0)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        """SIGTERM (unless it has exited already) and the exit code; kills it after 10 s."""
        if self.process.poll() is None:
            self.terminate()
        try:
            return self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"helios did not exit within {STOP_TIMEOUT_SECONDS} s of SIGTERM;"
                f" log:\n{self.log()}"
            ) from None


def start_helios(
    directory: Path,
    *,
    settings: Mapping[str, str] | None = None,
    policies: str | None = None,
    api_keys: str | None = API_KEY,
    tls: tuple[Path, Path] | None = None,
    args: tuple[str, ...] = (),
    role: str = "all",
) -> HeliosProcess:
    """Start ``helios --role <role>`` and wait until ``/health`` answers.

    ``policies`` is the text of a policy file (default: the built-in demo
    policies); ``api_keys`` goes to HELIOS_ALLOWED_API_KEYS (``None``: no key);
    ``tls`` is a (certificate, key) pair of PEM files. The control plane
    (roles ``all`` and ``control``) takes :data:`ADMIN_KEY`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    environment = {
        "HELIOS_HTTP_HOST": "127.0.0.1",
        "HELIOS_METRICS_HOST": "127.0.0.1",
        "HELIOS_ADMIN_API_KEYS": ADMIN_KEY,
    }
    if api_keys is not None:
        environment["HELIOS_ALLOWED_API_KEYS"] = api_keys
    if policies is not None:
        policy_file = directory / "policies.toml"
        policy_file.write_text(policies, encoding="utf-8")
        environment["HELIOS_POLICY_FILE"] = str(policy_file)
    verify: ssl.SSLContext | bool = True
    scheme = "http"
    if tls is not None:
        certificate, key = tls
        environment.update(
            GATEWAY_TLS_ENABLED="true",
            GATEWAY_CERT_PATH=str(certificate),
            GATEWAY_KEY_PATH=str(key),
        )
        verify = ssl.create_default_context(cafile=str(certificate))
        scheme = "https"
    environment.update(settings or {})
    control_scheme: str = "http"
    control_verify: ssl.SSLContext | bool = True
    if environment.get("HELIOS_CONTROL_TLS_ENABLED") == "true":
        control_scheme = "https"
        control_verify = ssl.create_default_context(cafile=environment["HELIOS_CONTROL_CERT_PATH"])

    # Free ports can be taken by someone else between picking and binding;
    # a start that failed for that reason is retried on other ports.
    for attempt in range(3):
        http_port, metrics_port, control_port = free_ports(3)
        environment["HELIOS_CONTROL_HTTP_PORT"] = str(control_port)
        log_path = directory / f"helios-{attempt}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                helios_command(
                    "--role",
                    role,
                    "--http-port",
                    str(http_port),
                    "--metrics-port",
                    str(metrics_port),
                    *args,
                ),
                env=clean_environment(environment),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        helios = HeliosProcess(
            process,
            http_port,
            metrics_port,
            log_path,
            scheme,
            verify,
            role,
            control_port,
            control_scheme=control_scheme,
            control_verify=control_verify,
        )
        if _wait_healthy(helios):
            return helios
        if "Address already in use" not in helios.log():
            break
    raise AssertionError(f"helios did not become healthy; log:\n{helios.log()}")


def _wait_healthy(helios: HeliosProcess) -> bool:
    """Poll ``/health`` until it answers 200 (True) or the process exits (False)."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if helios.process.poll() is not None:
            return False
        try:
            if all(
                httpx.get(url, verify=verify, timeout=1.0).status_code == 200
                for url, verify in helios.health_urls
            ):
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    helios.process.kill()
    helios.process.wait()
    raise AssertionError(
        f"helios did not answer /health within {START_TIMEOUT_SECONDS} s; log:\n{helios.log()}"
    )


@contextlib.contextmanager
def running_helios(directory: Path, **options: object) -> Iterator[HeliosProcess]:
    """``start_helios``; on exit SIGTERM, and the process must exit 0."""
    helios = start_helios(directory, **options)  # type: ignore[arg-type]
    try:
        yield helios
    finally:
        code = helios.stop()
    assert_stopped_cleanly(helios, code)


def assert_stopped_cleanly(helios: HeliosProcess, code: int) -> None:
    """Exit code 0, and no failure logged (a failed connection logs its traceback)."""
    log = helios.log()
    assert code == 0, f"helios exited {code} after SIGTERM; log:\n{log}"
    assert "Traceback" not in log, f"helios logged a failure; log:\n{log}"


# Raw HTTP/1.1.


@dataclass
class RawResponse:
    status: int
    # Lower-case names; a repeated header keeps its last value.
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Truncated(Exception):
    """The connection ended in the middle of a response."""


class ResponseReader:
    """Reads complete HTTP/1.1 responses (with content-length) from a trio stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def _fill(self) -> bool:
        """Read more bytes; False at end of stream (a reset counts as the end)."""
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        self.buffer += data
        return bool(data)

    async def response(self) -> RawResponse | None:
        """The next response; ``None`` if the connection ended cleanly before it began.

        Raises :class:`Truncated` if the connection ends part-way through one.
        """
        while b"\r\n\r\n" not in self.buffer:
            if not await self._fill():
                if self.buffer:
                    raise Truncated(bytes(self.buffer))
                return None
        head, _, _ = bytes(self.buffer).partition(b"\r\n\r\n")
        del self.buffer[: len(head) + 4]
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            if not await self._fill():
                raise Truncated(head + b"\r\n\r\n" + bytes(self.buffer))
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return RawResponse(int(status), headers, body)

    async def expect(self) -> RawResponse:
        """The next response, which must come."""
        response = await self.response()
        assert response is not None, "the connection closed without a response"
        return response

    async def closed(self) -> bool:
        """Wait for the end of the stream; True if it ended with nothing more sent."""
        while await self._fill():
            pass
        return not self.buffer


def request_bytes(
    target: str, *, method: str = "GET", headers: str = "", body: bytes = b""
) -> bytes:
    """One HTTP/1.1 request; ``headers`` holds extra CRLF-terminated lines."""
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    return f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{length}{headers}\r\n".encode() + body


async def open_raw(helios: HeliosProcess) -> tuple[trio.SocketStream, ResponseReader]:
    stream = await trio.open_tcp_stream("127.0.0.1", helios.http_port)
    return stream, ResponseReader(stream)


class Bystander:
    """A well-behaved client that keeps asking for decisions on its own keep-alive connection.

    Every answer must be a complete 200 decision; ``served_during`` waits until
    more answers have arrived. Run it with :func:`bystander`.
    """

    def __init__(self, helios: HeliosProcess, target: str) -> None:
        self.helios = helios
        self.target = target
        self.answered = 0
        self._answer = trio.Event()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self.helios.async_client() as client:
            started = False
            while True:
                response = await client.get(self.target)
                assert response.status_code == 200, response.text
                assert response.json()["allowed"] is True
                self.answered += 1
                self._answer.set()
                self._answer = trio.Event()
                if not started:
                    task_status.started()
                    started = True
                # A steady trickle rather than a busy loop.
                await trio.sleep(0.01)

    async def served_during(self, minimum: int) -> None:
        """Wait until ``minimum`` more answers have arrived (at most 5 s)."""
        target = self.answered + minimum
        with trio.fail_after(5):
            while self.answered < target:
                await self._answer.wait()


@contextlib.asynccontextmanager
async def bystander(helios: HeliosProcess, target: str) -> AsyncIterator[Bystander]:
    """A :class:`Bystander` running for the duration of the ``async with`` block."""
    client = Bystander(helios, target)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        yield client
        nursery.cancel_scope.cancel()
