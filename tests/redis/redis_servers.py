"""Real Redis servers for tests: one server, a three-master cluster, a sentinel setup.

Each helper starts ``redis-server`` processes on free loopback ports, waits
(with a bound) until they are ready, and returns an object that knows their
ports and URLs and stops them: :func:`start_server`, :func:`start_cluster`,
:func:`start_sentinel`. Nothing persists: no RDB, no AOF, everything under
the given directory. Every server accepts ``DEBUG`` from loopback, so tests
can pause it (``DEBUG SLEEP``).

``conftest.py`` next to this module wraps them in the pytest fixtures
``redis_server``, ``redis_server_factory``, ``redis_cluster`` and
``redis_sentinel``. Tests elsewhere import this module by its file name
(``tests/redis`` is on ``sys.path`` while pytest collects it; this directory
has no ``__init__.py`` because a package named ``redis`` would hide redis-py).

Set-up and checks go through redis-py's synchronous client, deliberately not
through the client under test.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

# Bounds on waiting for processes. A server starts in ~10 ms, a cluster forms
# in ~2 s; the bounds leave room for a loaded CI machine.
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
CLUSTER_TIMEOUT_S = 30.0

SERVICE_NAME = "mymaster"


def require_redis_server() -> None:
    """Skip the test when ``redis-server`` and ``redis-cli`` are not installed."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


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


def wait_until(
    condition: str, check: Callable[[], object], timeout_s: float = START_TIMEOUT_S
) -> None:
    """Poll ``check()`` every 20 ms until it is true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError) as error:
            last_error = error
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting until {condition} ({last_error})")


@dataclass
class RedisServer:
    """One ``redis-server`` process (a data server or a sentinel) on a loopback port.

    ``start`` may be called again after ``stop`` or ``kill``: the server comes
    back on the same port, empty.
    """

    port: int
    directory: Path
    args: tuple[str, ...] = ()
    password: str | None = None
    sentinel_config: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    starts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:port/0``."""
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / f"redis-{self.port}.log"

    def log(self) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def command(self) -> list[str]:
        if self.sentinel_config is not None:
            config = self.directory / f"sentinel-{self.port}.conf"
            config.write_text(self.sentinel_config, encoding="utf-8")
            return ["redis-server", str(config), "--sentinel"]
        command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--enable-debug-command",
            "local",
            # A replica's first sync would otherwise wait 5 s for more replicas.
            "--repl-diskless-sync-delay",
            "0",
        ]
        if self.password is not None:
            command += ["--requirepass", self.password]
        return command + list(self.args)

    def start(self) -> None:
        """Start the process and wait until it answers on its port."""
        assert self.process is None or self.process.poll() is not None, "already running"
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
                raise AssertionError(f"redis-server on port {self.port} exited:\n{self.log()}")
            if _answers_ping(self.port):
                return
            time.sleep(0.01)
        self.kill()
        raise AssertionError(f"redis-server on port {self.port} did not start:\n{self.log()}")

    def client(self) -> redis.Redis:
        """A synchronous redis-py client of this server, for set-up and checks.

        Use it in a ``with`` block: an unclosed client's socket is a warning,
        and warnings are errors in this test suite.
        """
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5.0
        )

    def execute(self, *args: object) -> object:
        """Run one command through a short-lived redis-py client."""
        with self.client() as client:
            return client.execute_command(*args)

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL after ``STOP_TIMEOUT_S``. Does nothing if not running."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing anything gracefully."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait()


def _answers_ping(port: int) -> bool:
    # A raw PING: any reply at all (PONG, or NOAUTH from a server with a
    # password) means the server is accepting commands.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64)[:1] in (b"+", b"-")
    except OSError:
        return False


def start_server(
    directory: Path,
    *,
    password: str | None = None,
    args: Sequence[str] = (),
    port: int | None = None,
) -> RedisServer:
    """Start one empty ``redis-server``; ``args`` are extra command-line options."""
    server = RedisServer(port or free_ports(1)[0], directory, tuple(args), password=password)
    server.start()
    return server


def stop_all(servers: Iterable[RedisServer]) -> None:
    for server in servers:
        server.stop()


@dataclass
class RedisClusterServers:
    """Three masters (no replicas) that together serve all 16,384 slots."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a seed."""
        return "redis+cluster://" + ",".join(node.address for node in self.nodes)

    def node(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def node_ids(self) -> dict[int, str]:
        """Port of each node -> its cluster node id."""
        return {node.port: _text(node.execute("CLUSTER", "MYID")) for node in self.nodes}

    def master_of_slot(self, slot: int) -> int:
        """The port of the node that serves ``slot``, as the first node sees it."""
        for first, last, master, *_ in _raw_slots(self.nodes[0]):
            if first <= slot <= last:
                return int(master[1])
        raise AssertionError(f"no node serves slot {slot}")

    def stop(self) -> None:
        stop_all(self.nodes)


def start_cluster(directory: Path, *, masters: int = 3) -> RedisClusterServers:
    """Start ``masters`` cluster-enabled servers and join them with ``redis-cli --cluster create``.

    Returns once every node reports ``cluster_state:ok`` and agrees on who
    serves every slot.
    """
    ports = free_ports(2 * masters)
    nodes = [
        RedisServer(
            ports[i],
            directory,
            (
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(directory / f"nodes-{ports[i]}.conf"),
                # An explicit bus port: port + 10000 may be taken or out of range.
                "--cluster-port",
                str(ports[masters + i]),
                "--cluster-node-timeout",
                "2000",
            ),
        )
        for i in range(masters)
    ]
    cluster = RedisClusterServers(nodes)
    try:
        for node in nodes:
            node.start()
        create = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(node.address for node in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=CLUSTER_TIMEOUT_S,
            check=False,
        )
        if create.returncode != 0:
            raise AssertionError(
                f"redis-cli --cluster create failed:\n{create.stdout.decode()}"
                f"{create.stderr.decode()}"
            )

        def formed() -> bool:
            views = []
            for node in nodes:
                if b"cluster_state:ok" not in _raw(node, "CLUSTER", "INFO"):
                    return False
                views.append(sorted((int(e[0]), int(e[1])) for e in _raw_slots(node)))
            return (
                all(view == views[0] for view in views)
                and sum(last - first + 1 for first, last in views[0]) == 16384
            )

        wait_until("the cluster is formed", formed, CLUSTER_TIMEOUT_S)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _raw(server: RedisServer, *args: str) -> Any:
    # A reply as the server sent it; redis-py parses some (INFO, CLUSTER SLOTS,
    # SENTINEL ...) into shapes of its own.
    with server.client() as client:
        connection = client.connection_pool.get_connection()
        try:
            connection.send_command(*args)
            return connection.read_response()
        finally:
            client.connection_pool.release(connection)


def _raw_slots(node: RedisServer) -> list[list[Any]]:
    return list(_raw(node, "CLUSTER", "SLOTS"))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class SentinelServers:
    """A master, one replica, and one sentinel that watches them as ``mymaster``."""

    master: RedisServer
    replica: RedisServer
    sentinel: RedisServer
    service_name: str = SERVICE_NAME

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:<sentinel port>/mymaster``."""
        return f"redis+sentinel://{self.sentinel.address}/{self.service_name}"

    def current_master_port(self) -> int:
        """The master's port as the sentinel names it now."""
        _, port = _raw(self.sentinel, "SENTINEL", "get-master-addr-by-name", self.service_name)
        return int(port)

    def wait_replicated(self, key: str) -> None:
        """Wait until the replica holds the master's value of ``key``.

        ``WAIT`` is no substitute: it may count a replica whose write stream
        has not started yet.
        """
        wait_until(
            f"the replica has the master's {key!r}",
            lambda: _raw(self.replica, "GET", key) == _raw(self.master, "GET", key),
        )

    def stop(self) -> None:
        stop_all([self.sentinel, self.replica, self.master])


def start_sentinel(directory: Path) -> SentinelServers:
    """Start a master, a replica of it, and a sentinel with a quorum of one.

    Returns once the replica is in sync and the sentinel knows it, so that
    ``SENTINEL failover mymaster`` can go ahead at once.
    """
    master_port, replica_port, sentinel_port = free_ports(3)
    master = RedisServer(master_port, directory)
    replica = RedisServer(replica_port, directory, ("--replicaof", "127.0.0.1", str(master_port)))
    sentinel = RedisServer(
        sentinel_port,
        directory,
        sentinel_config="\n".join(
            [
                f"port {sentinel_port}",
                "bind 127.0.0.1",
                f"dir {directory}",
                f"sentinel monitor {SERVICE_NAME} 127.0.0.1 {master_port} 1",
                # Low timeouts: a failover completes in about a second.
                f"sentinel down-after-milliseconds {SERVICE_NAME} 1000",
                f"sentinel failover-timeout {SERVICE_NAME} 5000",
                f"sentinel parallel-syncs {SERVICE_NAME} 1",
                "",
            ]
        ),
    )
    servers = SentinelServers(master, replica, sentinel)
    try:
        master.start()
        replica.start()
        # After the initial sync the master streams writes to the replica only
        # once the replica first acknowledges (up to a second later): a write
        # that shows up on the replica proves the stream flows.
        master.execute("SET", "replication-probe", "1")
        servers.wait_replicated("replication-probe")
        master.execute("DEL", "replication-probe")
        sentinel.start()

        def replica_known() -> bool:
            replicas = _raw(sentinel, "SENTINEL", "REPLICAS", SERVICE_NAME)
            return any(_flags(entry) == "slave" for entry in replicas)

        wait_until("the sentinel knows the replica", replica_known, CLUSTER_TIMEOUT_S)
    except BaseException:
        servers.stop()
        raise
    return servers


def _flags(entry: list[bytes] | dict[bytes, bytes]) -> str:
    # A SENTINEL REPLICAS entry: a map (RESP3, redis-py's default with Redis 7)
    # or a flat list of names and values (RESP2).
    fields = entry if isinstance(entry, dict) else dict(zip(entry[::2], entry[1::2], strict=True))
    return fields.get(b"flags", b"").decode()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A (certificate, key) pair for 127.0.0.1 and localhost, made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl tool is not installed")
    certificate, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(certificate),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return certificate, key


# Fixtures: conftest.py files import these (here and in tests/strong), so that
# every suite starts its servers the same way.


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Starts fresh servers (keyword arguments of ``start_server``); all stop at teardown."""
    require_redis_server()
    started: list[RedisServer] = []

    def start(**options: object) -> RedisServer:
        directory = tmp_path / f"redis-{len(started)}"
        server = start_server(directory, **options)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    stop_all(started)


@pytest.fixture
def redis_server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """One fresh, empty ``redis-server`` on a free loopback port."""
    return redis_server_factory()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A three-master Redis Cluster, shared by the tests of one module."""
    require_redis_server()
    cluster = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_sentinel(tmp_path: Path) -> Iterator[SentinelServers]:
    """A master, its replica and a sentinel watching them as ``mymaster``."""
    require_redis_server()
    servers = start_sentinel(tmp_path / "sentinel")
    yield servers
    servers.stop()
