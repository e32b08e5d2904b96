"""Process wiring: build the services from the configuration and run them.

A root nursery holds one task per service: for a gateway the data-plane HTTP
and gRPC listeners, metrics, the bucket sweeper and the store sync; for the
control plane its REST and gRPC listeners; and the signal watcher. Each
reports ready through ``task_status.started()`` before the start-up summary
is logged; if one fails, the nursery cancels the
others and the process exits with the error instead of staying half alive.

Shutdown (SIGINT / SIGTERM): the HTTP servers stop accepting and close idle
connections; requests in flight get ``gateway.shutdown_grace_seconds`` to
finish; then everything is cancelled, the spans still queued for export are
sent (when tracing is on), and the process exits 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import trio

from helios import __version__
from helios.backends.breaker import CircuitBreaker, CircuitState
from helios.backends.memory import BucketTable
from helios.backends.redis.url import redact
from helios.config import Config
from helios.control.model import GatewayInfo, Layout, Reset
from helios.core.policy import PolicySet
from helios.errors import BackendError, ConfigError
from helios.gateway.auth import KeyRing
from helios.gateway.http_api import HttpApi, error_body
from helios.gateway.metrics import GatewayCollector, GatewayMetrics, make_registry
from helios.gateway.metrics_http import MetricsApi
from helios.gateway.service import Clock, Gateway, RemoteBackend
from helios.gateway.sync import PolicySync, Registration, gateway_id
from helios.gateway.tenants import TenantCounts
from helios.grpc.server import GrpcServer
from helios.grpc.transport import GrpcListener
from helios.server.http import HTTPServer, Limits
from helios.store.kv import KeyValueStore
from helios.store.policy_file import file_version, load_policies
from helios.tracing import Tracing, log_tracing, start_tracing

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from helios.control.plane import ControlPlane

log = logging.getLogger("helios")

# How often the sweeper looks for idle buckets, and how many it visits a tick:
# about a millisecond of work every 50 ms at most.
SWEEP_INTERVAL_SECONDS = 0.05
SWEEP_BUDGET = 1024
POLICY_FILE_POLL_SECONDS = 1.0
# Counter resets waiting to be applied (each is one tenant's, applied in order).
RESET_QUEUE = 256
# How often the control plane checks that its store answers.
STORE_CHECK_SECONDS = 2.0
# How long exporting the last spans may hold up the exit.
TRACING_SHUTDOWN_SECONDS = 5.0


class Drainable(Protocol):
    def drain(self) -> None: ...

    async def wait_closed(self) -> None: ...


class StoreHealth:
    """Whether the control plane's store answers, checked in the background."""

    def __init__(self, store: KeyValueStore, layout: Layout) -> None:
        self.store = store
        self.layout = layout
        self.error: str | None = None
        self.failures = 0

    async def run(self) -> None:
        while True:
            try:
                await self.store.get(self.layout.tenants())
            except BackendError as error:
                if self.error is None:
                    log.warning(
                        "the store (%s) is not answering: %s", self.store.description, error.message
                    )
                self.error = error.message
                self.failures += 1
            else:
                if self.error is not None:
                    log.info("the store (%s) answers again", self.store.description)
                self.error = None
            await trio.sleep(STORE_CHECK_SECONDS)

    def problems(self) -> list[str]:
        if self.error is None:
            return []
        return [f"the store ({self.store.description}) is not answering: {self.error}"]


@dataclass
class Runtime:
    """The running services of one process (exposed for tests and tools)."""

    config: Config
    gateway: Gateway | None = None
    http_servers: list[HTTPServer] = field(default_factory=list)
    grpc_servers: list[GrpcListener] = field(default_factory=list)
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)
    store: KeyValueStore | None = None
    sync: PolicySync | None = None
    tracing: Tracing | None = None
    control: ControlPlane | None = None
    # Listeners drained on shutdown besides the data plane's (the control REST API).
    control_servers: list[Drainable] = field(default_factory=list)
    stopping: trio.Event = field(default_factory=trio.Event)
    # SIGHUP asks for a policy reload through this channel (room for one).
    reload_requests: trio.MemorySendChannel[None] = field(init=False)
    reload_received: trio.MemoryReceiveChannel[None] = field(init=False)

    def __post_init__(self) -> None:
        self.reload_requests, self.reload_received = trio.open_memory_channel[None](1)


def base_policies(config: Config) -> tuple[PolicySet, str]:
    """The policies a gateway starts from, before the store's: the policy file's.

    Without a policy file, the built-in demo policies, unless etcd is
    configured: a fleet's gateways take their policies from etcd alone.
    """
    if config.policies.file or not config.store.etcd_endpoints:
        return load_policies(config.policies.file or None)
    return PolicySet(), "no policy file"


def build_gateway(
    config: Config, clock: Clock | None = None, remote: RemoteBackend | None = None
) -> tuple[Gateway, str]:
    policies, source = base_policies(config)
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
        tenant_counts=(
            TenantCounts(config.metrics.max_tenants) if config.metrics.tenant_labels else None
        ),
    )
    return gateway, source


def _tls_context(
    config: Config, *, alpn: list[str] | None = None, control: bool = False
) -> ssl.SSLContext | None:
    """A listener's TLS context, or None without TLS; ``alpn``: protocols to offer.

    The gateway's listeners use the ``http`` settings; the control plane's
    (``control``) its own.
    """
    if control:
        enabled, cert, key = (
            config.control.tls_enabled,
            config.control.cert_path,
            config.control.key_path,
        )
        settings = ("control.cert_path", "control.key_path")
    else:
        enabled, cert, key = config.http.tls_enabled, config.http.cert_path, config.http.key_path
        settings = ("http.cert_path (GATEWAY_CERT_PATH)", "http.key_path (GATEWAY_KEY_PATH)")
    if not enabled:
        return None
    for setting, path in zip(settings, (cert, key), strict=True):
        if not os.path.isfile(path):
            raise ConfigError(f"{setting}: no such file {path!r}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            f"cannot load the TLS certificate {cert!r} with key {key!r}: {error}"
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
    tracing = start_tracing(config.role)
    try:
        await _run_with_backends(config, clock, tracing, task_status)
    finally:
        if tracing is not None:
            await _stop_tracing(tracing)


async def _run_with_backends(
    config: Config,
    clock: Clock | None,
    tracing: Tracing | None,
    task_status: trio.TaskStatus[Runtime],
) -> None:
    from helios.store.factory import open_store

    async with open_store(config.store, tracing=tracing) as store:
        if config.role == "control" or config.gateway.mode != "strong":
            await _run_roles(config, clock, None, store, tracing, task_status)
            return
        from helios.backends.redis import open_redis
        from helios.backends.redis.strong import StrongBackend

        async with open_redis(
            config.redis.url, timeout_ms=config.redis.timeout_ms, pool_size=config.redis.pool_size
        ) as redis:
            remote = StrongBackend(redis, key_prefix=config.redis.key_prefix, tracing=tracing)
            await _run_roles(config, clock, remote, store, tracing, task_status)


async def _stop_tracing(tracing: Tracing) -> None:
    """Export the spans still queued, within a bound, even while being cancelled."""
    with trio.CancelScope(shield=True), trio.move_on_after(TRACING_SHUTDOWN_SECONDS) as bound:
        # The SDK blocks while its export thread finishes; an abandoned wait
        # leaves that (daemon) thread to die with the process.
        await trio.to_thread.run_sync(tracing.shutdown, abandon_on_cancel=True)
    if bound.cancelled_caught:
        log.warning(
            "could not export the last spans within %g s; dropped them", TRACING_SHUTDOWN_SECONDS
        )


async def _run_roles(
    config: Config,
    clock: Clock | None,
    remote: RemoteBackend | None,
    store: KeyValueStore,
    tracing: Tracing | None,
    task_status: trio.TaskStatus[Runtime],
) -> None:
    runtime = Runtime(config)
    runtime.store = store
    runtime.tracing = tracing
    layout = Layout(config.store.prefix)
    source = ""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, runtime, nursery.cancel_scope)
        if config.role in ("gateway", "all"):
            source = await _start_gateway(runtime, nursery, clock, remote, store, layout)
        if config.role in ("control", "all"):
            await _start_control(runtime, nursery, store, layout)
        _log_summary(runtime, source)
        task_status.started(runtime)


async def _start_gateway(
    runtime: Runtime,
    nursery: trio.Nursery,
    clock: Clock | None,
    remote: RemoteBackend | None,
    store: KeyValueStore,
    layout: Layout,
) -> str:
    """Start the gateway's services; returns where its base policies came from."""
    config = runtime.config
    gateway, source = build_gateway(config, clock, remote)
    runtime.gateway = gateway
    tls = _tls_context(config)
    if remote is not None:
        await _check_remote(gateway, config)

    resets_in, resets_out = trio.open_memory_channel[Reset](RESET_QUEUE)

    def reset_requested(reset: Reset) -> None:
        try:
            resets_in.send_nowait(reset)
        except trio.WouldBlock:
            log.error("too many counter resets at once; dropped the one for %s", reset.tenant)

    sync = PolicySync(
        gateway, store, layout, base_policies=gateway.policies, on_reset=reset_requested
    )
    runtime.sync = sync
    try:
        await nursery.start(sync.run)
    except BackendError as error:
        raise ConfigError(
            f"cannot load the policies from the store ({store.description}): {error.message}"
        ) from None
    nursery.start_soon(_apply_resets, gateway, resets_out)

    metrics = GatewayMetrics()
    api = HttpApi(
        gateway, metrics, max_batch_checks=config.gateway.max_batch_checks, tracing=runtime.tracing
    )
    http = config.http
    limits = Limits(
        max_request_line_bytes=http.max_request_line_bytes,
        max_header_bytes=http.max_header_bytes,
        max_headers=http.max_headers,
        max_body_bytes=http.max_body_bytes,
        request_timeout_seconds=http.request_timeout_seconds,
        idle_timeout_seconds=http.idle_timeout_seconds,
    )
    # Without tracing, the server calls the API itself: not even a check per request.
    handler = api if runtime.tracing is None else api.traced
    data_plane = HTTPServer(handler, limits=limits, error_body=error_body)
    runtime.http_servers.append(data_plane)
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
        grpc_server = GrpcServer(
            gateway,
            max_batch_checks=config.gateway.max_batch_checks,
            max_message_bytes=config.grpc.max_message_bytes,
            metrics=metrics,
            tracing=runtime.tracing,
        )
        runtime.grpc_servers.append(grpc_server)
        # gRPC clients insist on negotiating HTTP/2 through ALPN.
        grpc_tls = _tls_context(config, alpn=["h2"])
        runtime.addresses["grpc"] = await nursery.start(
            _serve_grpc, grpc_server, config.grpc.host, config.grpc.port, grpc_tls, "grpc"
        )
    if config.metrics.enabled:
        registry = make_registry(GatewayCollector(gateway, metrics, data_plane, sync))
        runtime.addresses["metrics"] = await _serve_metrics(
            runtime, nursery, registry, config.metrics.host, config.metrics.port, "metrics"
        )
    nursery.start_soon(_sweep, gateway)
    if remote is not None:
        nursery.start_soon(gateway.probe_remote)
    if config.policies.file:
        nursery.start_soon(_watch_policy_file, sync, config.policies.file, runtime.reload_received)
    host, port = runtime.addresses["http"]
    info = GatewayInfo(
        id=gateway_id(),
        address=f"{host}:{port}",
        mode=gateway.mode,
        version=__version__,
        revision=sync.revision,
        started_at=time.time(),
    )
    registration = Registration(
        store, layout, info, sync, ttl_seconds=config.store.lease_ttl_seconds
    )
    nursery.start_soon(registration.run)
    return source


async def _start_control(
    runtime: Runtime, nursery: trio.Nursery, store: KeyValueStore, layout: Layout
) -> None:
    """Start the control plane's REST and gRPC listeners (and its metrics)."""
    from helios.control.grpc import ControlGrpcServer
    from helios.control.metrics import ControlCollector, ControlMetrics
    from helios.control.plane import ControlPlane
    from helios.control.rest import ControlHttpServer, create_app

    config = runtime.config
    control = config.control
    plane = ControlPlane(store, layout)
    runtime.control = plane
    admin_keys = KeyRing(control.admin_api_keys)
    health = StoreHealth(store, layout)
    nursery.start_soon(health.run)
    metrics = ControlMetrics()
    app = create_app(
        plane, admin_keys, ready=health.problems, metrics=metrics, tracing=runtime.tracing
    )
    # Checked here so that a bad certificate stops start-up with a clear message.
    control_tls = _tls_context(config, control=True)
    http_server = ControlHttpServer(
        app,
        grace_seconds=config.gateway.shutdown_grace_seconds,
        tls=(control.cert_path, control.key_path) if control_tls is not None else None,
    )
    runtime.control_servers.append(http_server)
    runtime.addresses["control"] = await nursery.start(
        http_server.serve, control.http_host, control.http_port
    )
    if control.grpc_enabled:
        control_grpc = ControlGrpcServer(plane, control.admin_api_keys, metrics=metrics)
        runtime.grpc_servers.append(control_grpc)
        runtime.addresses["control_grpc"] = await nursery.start(
            lambda task_status: control_grpc.serve(
                control.grpc_host,
                control.grpc_port,
                ssl_context=_tls_context(config, alpn=["h2"], control=True),
                task_status=task_status,
            )
        )
    if control.metrics_enabled:
        registry = make_registry(ControlCollector(health, metrics))
        runtime.addresses["control_metrics"] = await _serve_metrics(
            runtime,
            nursery,
            registry,
            control.metrics_host,
            control.metrics_port,
            "control.metrics",
        )


async def _serve_metrics(
    runtime: Runtime,
    nursery: trio.Nursery,
    registry: CollectorRegistry,
    host: str,
    port: int,
    setting: str,
) -> tuple[str, int]:
    server = HTTPServer(MetricsApi(registry), limits=Limits(), error_body=error_body)
    runtime.http_servers.append(server)
    listeners = await nursery.start(
        lambda task_status: server.serve(
            host, port, setting=f"{setting}.host, {setting}.port", task_status=task_status
        )
    )
    address: tuple[str, int] = listeners[0].socket.getsockname()[:2]
    return address


async def _apply_resets(gateway: Gateway, resets: trio.MemoryReceiveChannel[Reset]) -> None:
    """Apply counter resets from the control plane, one after another."""
    async for reset in resets:
        what = reset.tenant if reset.resource is None else f"{reset.tenant}/{reset.resource}"
        try:
            dropped = await gateway.reset_counters(reset.tenant, reset.resource)
        except BackendError as error:
            log.error("could not reset the counters of %s: %s", what, error.message)
            continue
        log.info("reset the counters of %s (buckets dropped: %d)", what, dropped)


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
    sync: PolicySync, path: str, requests: trio.MemoryReceiveChannel[None]
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
        await _reload(sync, path)


async def _reload(sync: PolicySync, path: str) -> None:
    try:
        # In a thread: parsing a large file must not stall the decisions.
        policies, _ = await trio.to_thread.run_sync(lambda: load_policies(path))
    except ConfigError as error:
        log.error("policy file not reloaded, keeping the previous policies: %s", error.message)
        return
    sync.set_base(policies)
    log.info("reloaded %d policies from %s", len(policies), path)


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
    server: GrpcListener,
    host: str,
    port: int,
    tls: ssl.SSLContext | None,
    setting: str,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await server.serve(host, port, ssl_context=tls, task_status=task_status)
    except OSError as error:
        raise OSError(
            error.errno,
            f"cannot listen on {host}:{port} (set by {setting}.host, {setting}.port):"
            f" {error.strerror or error}",
        ) from None


async def shutdown(runtime: Runtime, root: trio.CancelScope) -> None:
    """Stop accepting, let requests in flight finish within the grace period, then stop."""
    runtime.stopping.set()
    for server in runtime.http_servers:
        server.drain()
    for grpc_server in runtime.grpc_servers:
        grpc_server.drain()
    for control_server in runtime.control_servers:
        control_server.drain()
    with trio.move_on_after(runtime.config.gateway.shutdown_grace_seconds) as grace:
        for server in runtime.http_servers:
            await server.wait_closed()
        for grpc_server in runtime.grpc_servers:
            await grpc_server.wait_closed()
        for control_server in runtime.control_servers:
            await control_server.wait_closed()
    if grace.cancelled_caught:
        open_connections = sum(server.connections for server in runtime.http_servers)
        log.warning("grace period over; closing %d connections", open_connections)
    log.info("stopped")
    root.cancel()


def _log_summary(runtime: Runtime, source: str) -> None:
    config = runtime.config
    tls = config.http.tls_enabled
    schemes = {"http": "https" if tls else "http", "grpc": "grpcs" if tls else "grpc"}
    control_tls = config.control.tls_enabled
    schemes["control"] = "https" if control_tls else "http"
    schemes["control_grpc"] = "grpcs" if control_tls else "grpc"
    listeners = ", ".join(
        f"{name} {schemes.get(name, 'http')}://{host}:{port}"
        for name, (host, port) in runtime.addresses.items()
    )
    store = runtime.store.description if runtime.store is not None else "none"
    gateway = runtime.gateway
    if gateway is None:
        log.info("helios %s started: role control, store %s; %s", __version__, store, listeners)
    else:
        mode = gateway.mode
        if gateway.remote is not None:
            mode += f" (redis {redact(config.redis.url)}, timeout {config.redis.timeout_ms} ms)"
        log.info(
            "helios %s started: role %s, mode %s, %d policies (%s, store %s), max %d buckets; %s",
            __version__,
            config.role,
            mode,
            len(gateway.policies),
            source,
            store,
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
                " (set HELIOS_ALLOWED_API_KEYS, or issue tenant keys through the control plane)"
            )
    if runtime.control is not None and not config.control.admin_api_keys:
        log.warning(
            "no admin API keys are configured: every control-plane request will get 401"
            " (set HELIOS_ADMIN_API_KEYS)"
        )
    log_tracing(runtime.tracing)
