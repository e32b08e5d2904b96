"""Process wiring: build the services from the configuration and run them.

A root nursery holds one task per service (data-plane HTTP, metrics, bucket
sweeper, signal watcher). Each reports ready through ``task_status.started()``
before the start-up summary is logged; if one fails, the nursery cancels the
others and the process exits with the error instead of staying half alive.

Shutdown (SIGINT / SIGTERM): the HTTP servers stop accepting and close idle
connections; requests in flight get ``gateway.shutdown_grace_seconds`` to
finish; then everything is cancelled and the process exits 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import ssl
from dataclasses import dataclass, field

import trio

from helios import __version__
from helios.backends.breaker import CircuitBreaker, CircuitState
from helios.backends.memory import BucketTable
from helios.backends.redis.url import redact
from helios.config import Config
from helios.errors import BackendError, ConfigError
from helios.gateway.auth import KeyRing
from helios.gateway.http_api import HttpApi, error_body
from helios.gateway.metrics import GatewayCollector, GatewayMetrics, make_registry
from helios.gateway.metrics_http import MetricsApi
from helios.gateway.service import Clock, Gateway, RemoteBackend
from helios.grpc.server import GrpcServer
from helios.server.http import HTTPServer, Limits
from helios.store.policy_file import file_version, load_policies

log = logging.getLogger("helios")

# How often the sweeper looks for idle buckets, and how many it visits a tick:
# about a millisecond of work every 50 ms at most.
SWEEP_INTERVAL_SECONDS = 0.05
SWEEP_BUDGET = 1024
POLICY_FILE_POLL_SECONDS = 1.0


@dataclass
class Runtime:
    """The running services of one process (exposed for tests and tools)."""

    config: Config
    gateway: Gateway | None = None
    http_servers: list[HTTPServer] = field(default_factory=list)
    grpc_servers: list[GrpcServer] = field(default_factory=list)
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)
    stopping: trio.Event = field(default_factory=trio.Event)
    # SIGHUP asks for a policy reload through this channel (room for one).
    reload_requests: trio.MemorySendChannel[None] = field(init=False)
    reload_received: trio.MemoryReceiveChannel[None] = field(init=False)

    def __post_init__(self) -> None:
        self.reload_requests, self.reload_received = trio.open_memory_channel[None](1)


def build_gateway(
    config: Config, clock: Clock | None = None, remote: RemoteBackend | None = None
) -> tuple[Gateway, str]:
    policies, source = load_policies(config.policies.file or None)
    keys = KeyRing(config.gateway.allowed_api_keys, disabled=config.gateway.auth_disabled)
    table = BucketTable(config.gateway.max_buckets)
    where = redact(config.redis.url)

    def circuit_changed(state: CircuitState) -> None:
        if state is CircuitState.CLOSED:
            log.warning("Redis at %s answers again; deciding in Redis", where)
        elif state is CircuitState.OPEN:
            log.warning(
                "Redis at %s is failing; decisions follow each policy's failure_mode", where
            )

    breaker = CircuitBreaker(
        failure_threshold=config.redis.breaker_failures,
        cooldown_seconds=config.redis.breaker_cooldown_seconds,
        on_change=circuit_changed,
    )
    gateway = Gateway(
        policies,
        table,
        keys,
        clock or Clock(),
        role=config.role,
        mode=config.gateway.mode,
        remote=remote,
        breaker=breaker,
        remote_timeout_seconds=config.redis.timeout_ms / 1000,
    )
    return gateway, source


def _tls_context(config: Config, *, alpn: list[str] | None = None) -> ssl.SSLContext | None:
    """The server's TLS context, or None without TLS; ``alpn``: protocols to offer."""
    if not config.http.tls_enabled:
        return None
    for setting, path in (
        ("http.cert_path (GATEWAY_CERT_PATH)", config.http.cert_path),
        ("http.key_path (GATEWAY_KEY_PATH)", config.http.key_path),
    ):
        if not os.path.isfile(path):
            raise ConfigError(f"{setting}: no such file {path!r}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.http.cert_path, config.http.key_path)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            f"cannot load the TLS certificate {config.http.cert_path!r}"
            f" with key {config.http.key_path!r}: {error}"
        ) from None
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


async def run(
    config: Config,
    *,
    clock: Clock | None = None,
    task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the process's roles until a signal (or cancellation) stops them."""
    if config.role == "control":
        raise ConfigError(
            "the control role is not available in this version; run --role gateway or --role all"
        )
    if config.gateway.mode != "strong":
        await _run_gateway(config, clock, None, task_status)
        return
    from helios.backends.redis import open_redis
    from helios.backends.redis.strong import StrongBackend

    async with open_redis(
        config.redis.url, timeout_ms=config.redis.timeout_ms, pool_size=config.redis.pool_size
    ) as redis:
        remote = StrongBackend(redis, key_prefix=config.redis.key_prefix)
        await _run_gateway(config, clock, remote, task_status)


async def _run_gateway(
    config: Config,
    clock: Clock | None,
    remote: RemoteBackend | None,
    task_status: trio.TaskStatus[Runtime],
) -> None:
    runtime = Runtime(config)
    gateway, source = build_gateway(config, clock, remote)
    runtime.gateway = gateway
    tls = _tls_context(config)
    if remote is not None:
        await _check_remote(gateway, config)

    metrics = GatewayMetrics()
    api = HttpApi(gateway, metrics, max_batch_checks=config.gateway.max_batch_checks)
    http = config.http
    limits = Limits(
        max_request_line_bytes=http.max_request_line_bytes,
        max_header_bytes=http.max_header_bytes,
        max_headers=http.max_headers,
        max_body_bytes=http.max_body_bytes,
        request_timeout_seconds=http.request_timeout_seconds,
        idle_timeout_seconds=http.idle_timeout_seconds,
    )
    data_plane = HTTPServer(api, limits=limits, error_body=error_body)
    runtime.http_servers.append(data_plane)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, runtime, nursery.cancel_scope)
        listeners = await nursery.start(
            lambda task_status: data_plane.serve(
                http.host,
                http.port,
                ssl_context=tls,
                setting="http.host, http.port",
                task_status=task_status,
            )
        )
        runtime.addresses["http"] = listeners[0].socket.getsockname()[:2]
        if config.grpc.enabled:
            grpc_server = GrpcServer(gateway, max_batch_checks=config.gateway.max_batch_checks)
            runtime.grpc_servers.append(grpc_server)
            # gRPC clients insist on negotiating HTTP/2 through ALPN.
            grpc_tls = _tls_context(config, alpn=["h2"])
            runtime.addresses["grpc"] = await nursery.start(
                _serve_grpc, grpc_server, config.grpc.host, config.grpc.port, grpc_tls
            )
        if config.metrics.enabled:
            registry = make_registry(GatewayCollector(gateway, metrics, data_plane))
            metrics_server = HTTPServer(
                MetricsApi(registry), limits=Limits(), error_body=error_body
            )
            runtime.http_servers.append(metrics_server)
            listeners = await nursery.start(
                lambda task_status: metrics_server.serve(
                    config.metrics.host,
                    config.metrics.port,
                    setting="metrics.host, metrics.port",
                    task_status=task_status,
                )
            )
            runtime.addresses["metrics"] = listeners[0].socket.getsockname()[:2]
        nursery.start_soon(_sweep, gateway)
        if remote is not None:
            nursery.start_soon(gateway.probe_remote)
        if config.policies.file:
            nursery.start_soon(
                _watch_policy_file, gateway, config.policies.file, runtime.reload_received
            )
        _log_summary(runtime, source, tls is not None)
        task_status.started(runtime)


async def _sweep(gateway: Gateway) -> None:
    table = gateway.table
    while True:
        await trio.sleep(SWEEP_INTERVAL_SECONDS)
        table.sweep(gateway.clock.now_ns(), SWEEP_BUDGET)


async def _check_remote(gateway: Gateway, config: Config) -> None:
    """Ask Redis once at start-up; if it does not answer, start with the circuit open."""
    assert gateway.remote is not None
    try:
        with trio.fail_after(1.0):
            await gateway.remote.ping()
    except (BackendError, trio.TooSlowError) as error:
        gateway.breaker.trip(trio.current_time())
        log.warning(
            "Redis at %s is not answering (%s); decisions follow each policy's"
            " failure_mode until it does",
            redact(config.redis.url),
            error,
        )


async def _watch_policy_file(
    gateway: Gateway, path: str, requests: trio.MemoryReceiveChannel[None]
) -> None:
    """Apply changes to the policy file within a second, keeping every counter.

    A change is seen by the file's modification time and size; a request
    (SIGHUP) reloads it regardless. A file that does not load is reported and
    ignored: the gateway keeps serving the policies it has.
    """
    version = file_version(path)
    while True:
        forced = False
        with trio.move_on_after(POLICY_FILE_POLL_SECONDS):
            await requests.receive()
            forced = True
        current = file_version(path)
        if current == version and not forced:
            continue
        version = current
        await _reload(gateway, path)


async def _reload(gateway: Gateway, path: str) -> None:
    revision = gateway.policies.revision + 1
    try:
        # In a thread: parsing a large file must not stall the decisions.
        policies, _ = await trio.to_thread.run_sync(lambda: load_policies(path, revision=revision))
    except ConfigError as error:
        log.error("policy file not reloaded, keeping the previous policies: %s", error.message)
        return
    gateway.set_policies(policies)
    log.info("reloaded %d policies from %s (revision %d)", len(policies), path, revision)


async def _watch_signals(runtime: Runtime, root: trio.CancelScope) -> None:
    """SIGINT / SIGTERM drain and stop the process; SIGHUP reloads the policy file."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                if not runtime.config.policies.file:
                    log.info("received SIGHUP; nothing to reload (built-in policies)")
                # A reload already asked for and not yet done covers this one.
                with contextlib.suppress(trio.WouldBlock):
                    runtime.reload_requests.send_nowait(None)
                continue
            log.info("received %s; draining", signal.Signals(signum).name)
            await shutdown(runtime, root)
            return


async def _serve_grpc(
    server: GrpcServer,
    host: str,
    port: int,
    tls: ssl.SSLContext | None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await server.serve(host, port, ssl_context=tls, task_status=task_status)
    except OSError as error:
        raise OSError(
            error.errno,
            f"cannot listen on {host}:{port} (set by grpc.host, grpc.port):"
            f" {error.strerror or error}",
        ) from None


async def shutdown(runtime: Runtime, root: trio.CancelScope) -> None:
    """Stop accepting, let requests in flight finish within the grace period, then stop."""
    runtime.stopping.set()
    for server in runtime.http_servers:
        server.drain()
    for grpc_server in runtime.grpc_servers:
        grpc_server.drain()
    with trio.move_on_after(runtime.config.gateway.shutdown_grace_seconds) as grace:
        for server in runtime.http_servers:
            await server.wait_closed()
        for grpc_server in runtime.grpc_servers:
            await grpc_server.wait_closed()
    if grace.cancelled_caught:
        open_connections = sum(server.connections for server in runtime.http_servers)
        log.warning("grace period over; closing %d connections", open_connections)
    log.info("stopped")
    root.cancel()


def _log_summary(runtime: Runtime, source: str, tls: bool) -> None:
    config = runtime.config
    gateway = runtime.gateway
    assert gateway is not None
    schemes = {"http": "https" if tls else "http", "grpc": "grpcs" if tls else "grpc"}
    listeners = ", ".join(
        f"{name} {schemes.get(name, 'http')}://{host}:{port}"
        for name, (host, port) in runtime.addresses.items()
    )
    mode = gateway.mode
    if gateway.remote is not None:
        mode += f" (redis {redact(config.redis.url)}, timeout {config.redis.timeout_ms} ms)"
    log.info(
        "helios %s started: role %s, mode %s, %d policies from %s, max %d buckets; %s",
        __version__,
        config.role,
        mode,
        len(gateway.policies),
        source,
        config.gateway.max_buckets,
        listeners,
    )
    if gateway.keys.disabled:
        log.warning(
            "API key checks are disabled (gateway.auth_disabled); use only on a trusted network"
        )
    elif gateway.keys.empty:
        log.warning(
            "no API keys are configured: every decision request will get 401"
            " (set HELIOS_ALLOWED_API_KEYS)"
        )
