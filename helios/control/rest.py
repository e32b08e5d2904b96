"""The control plane's REST API (PRODUCT §7) on quart-trio, and its hypercorn server.

Every route under ``/v1`` needs an admin key (``X-API-Key`` or
``Authorization: Bearer``), checked before anything else about the request.
Each view parses the path, query and body, then calls one
:class:`~helios.control.plane.ControlPlane` operation, which validates
everything before it writes: a 4xx answer has changed nothing. Errors have
the data plane's JSON shape, ``{"error": message, "field": name}``. A body
is one JSON object that gives each field once, read by one function so that
every route words the same fault the same way.

Documents with a revision (tenants, policies) are answered with
``ETag: "<revision>"``; ``If-Match: "<revision>"`` on a write makes it
conditional, and a write against a changed document answers 409.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote_to_bytes

import hypercorn.logging
import hypercorn.trio
import trio
from hypercorn.config import Config, Sockets
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope
from opentelemetry import context, trace
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug import exceptions as http_errors

from helios import __version__
from helios.control.metrics import ControlMetrics
from helios.control.openapi import openapi_document
from helios.control.plane import ControlPlane
from helios.errors import (
    HeliosError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Unauthenticated,
)
from helios.gateway.auth import KeyRing
from helios.gateway.http_api import error_body
from helios.jsonbody import parse_object

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from helios.tracing import Tracing

log = logging.getLogger("helios.control")
access_log = logging.getLogger("helios.control.access")

# Far more than any policy or tenant needs; it bounds what one request can make
# the process hold in memory.
MAX_BODY_BYTES = 1024 * 1024

# Routes anyone may call: probes must work without a key.
_OPEN_PATHS = frozenset({"/health", "/ready"})
# Printable ASCII that may stay as it is in a logged path; everything else is
# percent-encoded so that a path cannot forge log lines.
_LOG_SAFE = "/!$&'()*+,;=:@"
_TENANT_FIELDS = frozenset({"name", "description"})
_JSON = "application/json"
# Where the rule that matched a request is noted in its ASGI scope, for metrics.
_ROUTE = "helios.route"

ReadyCheck = Callable[[], list[str]]


def create_app(
    plane: ControlPlane,
    admin_keys: KeyRing,
    *,
    ready: ReadyCheck | None = None,
    metrics: ControlMetrics | None = None,
    tracing: Tracing | None = None,
) -> QuartTrio:
    """The control plane's REST application, serving ``plane`` to holders of ``admin_keys``.

    ``ready`` returns the reasons the control plane cannot serve yet (none:
    ready); ``GET /ready`` answers 503 with them. ``metrics`` counts every
    request answered. ``tracing``: a span for each sampled request but the probes.
    """
    app = _ControlApp(__name__, static_folder=None)
    app.metrics = metrics
    app.tracing = tracing
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        PROVIDE_AUTOMATIC_OPTIONS=False,
        # Bodies are small; a client that trickles one ties up a connection.
        BODY_TIMEOUT=30,
    )
    api = _Api(plane, admin_keys, ready)
    for rule, methods, view, query in api.routes():
        app.add_url_rule(rule, view.__name__, view, methods=methods)
        api.query_fields[view.__name__] = query
    # First: the route is noted even for requests that authentication refuses.
    app.before_request(_note_route)
    app.before_request(api.authenticate)
    app.register_error_handler(HeliosError, _helios_error)
    app.register_error_handler(http_errors.HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _check_path() -> None:
    """Refuse a path that does not decode to text: names in it would be mangled."""
    raw = request.scope.get("raw_path") or request.path.encode()
    try:
        path = unquote_to_bytes(raw.decode("ascii")).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(
            "the path is not valid UTF-8 once percent-decoded", field="path"
        ) from None
    if any(ord(char) < 0x20 or char == "\x7f" for char in path):
        raise InvalidRequest("the path must not contain control characters", field="path")


async def _note_route(*_: Any) -> None:
    """Note the rule that matched (a bounded set, unlike paths) for the request metrics."""
    if request.url_rule is not None:
        request.scope[_ROUTE] = request.url_rule.rule  # type: ignore[literal-required]


class _ControlApp(QuartTrio):
    """The application, with an access log and metrics of every HTTP request it answers."""

    metrics: ControlMetrics | None = None
    tracing: Tracing | None = None

    async def asgi_app(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await super().asgi_app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        span = None
        if self.tracing is not None and scope["path"] not in _OPEN_PATHS:
            span = _start_span(self.tracing, scope)

        async def send_and_note(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            if message["type"] != "http.response.body" or message.get("more_body", False):
                await send(message)
                return
            # quart-trio cancels the request's tasks as the response ends, while
            # hypercorn, inside this call, closes a connection it will not reuse
            # (when draining); cancelled half-way, that socket would stay open
            # until the client left or the grace period ended. hypercorn already
            # shields its socket writes, so this adds no unbounded wait.
            with trio.CancelScope(shield=True):
                await send(message)

        # The request's tasks inherit the span as current: etcd calls become its children.
        token = context.attach(trace.set_span_in_context(span)) if span is not None else None
        try:
            await super().asgi_app(scope, receive, send_and_note)
        finally:
            if token is not None:
                context.detach(token)
            if span is not None:
                _end_span(span, scope, status)
            seconds = time.perf_counter() - started
            if self.metrics is not None:
                route = scope.get(_ROUTE)
                self.metrics.observe(
                    scope["method"], route if isinstance(route, str) else None, status, seconds
                )
            # The path only: headers and bodies may hold keys, which are never logged.
            client = scope.get("client")
            access_log.info(
                "%s %s %s %d %.1fms",
                client[0] if client else "-",
                scope["method"],
                quote(scope["path"], safe=_LOG_SAFE),
                status,
                seconds * 1000,
            )


def _start_span(tracing: Tracing, scope: HTTPScope) -> Span | None:
    """A SERVER span for the request, if sampled (W3C ``traceparent`` honoured)."""
    headers = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope["headers"]
        if name in (b"traceparent", b"tracestate")
    }
    return tracing.start_server_span(
        "helios.control", headers.get("traceparent"), headers.get("tracestate")
    )


def _end_span(span: Span, scope: HTTPScope, status: int) -> None:
    method = scope["method"]
    route = scope.get(_ROUTE)
    attributes: dict[str, str | int] = {
        "http.request.method": method,
        "http.response.status_code": status,
    }
    if isinstance(route, str):
        attributes["http.route"] = route
        span.update_name(f"{method} {route}")
    else:
        span.update_name(method)
    span.set_attributes(attributes)
    if status >= 500 or not status:
        span.set_attribute("error.type", str(status or "no response"))
        span.set_status(trace.StatusCode.ERROR)
    span.end()


View = Callable[..., Awaitable[Response]]


class _Api:
    """The views, bound to one control plane and its admin keys."""

    def __init__(self, plane: ControlPlane, admin_keys: KeyRing, ready: ReadyCheck | None) -> None:
        self.plane = plane
        self.admin_keys = admin_keys
        self.ready_check = ready
        # The query parameters each view accepts, by endpoint name.
        self.query_fields: dict[str, frozenset[str]] = {}

    def routes(self) -> list[tuple[str, list[str], View, frozenset[str]]]:
        """Every route: its rule, methods, view, and accepted query parameters."""
        none: frozenset[str] = frozenset()
        tenant = "/v1/tenants/<tenant>"
        return [
            ("/health", ["GET"], self.health, none),
            ("/ready", ["GET"], self.ready, none),
            ("/v1/openapi.json", ["GET"], self.openapi, none),
            ("/v1/tenants", ["GET"], self.list_tenants, frozenset({"limit", "after"})),
            ("/v1/tenants", ["POST"], self.create_tenant, none),
            (tenant, ["GET"], self.get_tenant, none),
            (tenant, ["PATCH"], self.update_tenant, none),
            (tenant, ["DELETE"], self.delete_tenant, none),
            (f"{tenant}/policies", ["GET"], self.list_policies, none),
            (f"{tenant}/policies/<path:resource>", ["GET"], self.get_policy, none),
            (f"{tenant}/policies/<path:resource>", ["PUT"], self.put_policy, none),
            (f"{tenant}/policies/<path:resource>", ["DELETE"], self.delete_policy, none),
            (f"{tenant}/keys", ["GET"], self.list_keys, none),
            (f"{tenant}/keys", ["POST"], self.issue_key, none),
            (f"{tenant}/keys/<key_id>", ["DELETE"], self.revoke_key, none),
            (f"{tenant}/reset", ["POST"], self.reset, none),
            ("/v1/gateways", ["GET"], self.list_gateways, none),
        ]

    async def authenticate(self) -> None:
        """Refuse every request but the probes without an admin key; then check the query."""
        if request.path in _OPEN_PATHS:
            return
        key = _presented_key()
        if key is None:
            raise Unauthenticated(
                "an admin API key is required (X-API-Key header or Authorization: Bearer)",
                field="api_key",
            )
        if self.admin_keys.identify(key) is not None:
            raise PermissionDenied(
                "this is a tenant's API key; the control plane needs an admin key",
                field="api_key",
            )
        _check_path()
        if request.endpoint is not None:
            _check_query(self.query_fields.get(request.endpoint, frozenset()))

    # Probes and the API description.

    async def health(self) -> Response:
        return _json({"status": "ok", "role": "control", "version": __version__})

    async def ready(self) -> Response:
        reasons = self.ready_check() if self.ready_check is not None else []
        if reasons:
            return _json({"status": "not ready", "reasons": reasons}, 503)
        return _json({"status": "ready"})

    async def openapi(self) -> Response:
        return _json(openapi_document())

    # Tenants.

    async def list_tenants(self) -> Response:
        limit = request.args.get("limit")
        after = request.args.get("after", "")
        page = await self.plane.list_tenants(
            limit=_page_size(limit) if limit is not None else 100, after=after
        )
        return _json({"tenants": [tenant.to_dict() for tenant in page.items], "next": page.next})

    async def create_tenant(self) -> Response:
        body = await _body(_TENANT_FIELDS, required=True)
        if "name" not in body:
            raise InvalidRequest("name is required", field="name")
        tenant = await self.plane.create_tenant(body["name"], body.get("description"))
        return _json(
            tenant.to_dict(),
            201,
            etag=tenant.revision,
            location=f"/v1/tenants/{quote(tenant.name, safe='*')}",
        )

    async def get_tenant(self, tenant: str) -> Response:
        found = await self.plane.get_tenant(tenant)
        return _json(found.to_dict(), etag=found.revision)

    async def update_tenant(self, tenant: str) -> Response:
        expected = _if_match()
        body = await _body(frozenset({"description"}), required=True)
        updated = await self.plane.update_tenant(
            tenant, body.get("description"), expected_revision=expected
        )
        return _json(updated.to_dict(), etag=updated.revision)

    async def delete_tenant(self, tenant: str) -> Response:
        await self.plane.delete_tenant(tenant, expected_revision=_if_match())
        return _no_content()

    # Policies.

    async def list_policies(self, tenant: str) -> Response:
        policies = await self.plane.list_policies(tenant)
        return _json({"policies": [policy.to_dict() for policy in policies]})

    async def get_policy(self, tenant: str, resource: str) -> Response:
        stored = await self.plane.get_policy(tenant, resource)
        return _json(stored.to_dict(), etag=stored.revision)

    async def put_policy(self, tenant: str, resource: str) -> Response:
        expected = _if_match()
        # Which fields a policy takes is the policy parser's to say.
        document = await _body(None, required=True)
        stored, created = await self.plane.put_policy(
            tenant, resource, document, expected_revision=expected
        )
        policy = stored.policy
        location = None
        if created:
            location = (
                f"/v1/tenants/{quote(policy.tenant, safe='*')}"
                f"/policies/{quote(policy.resource, safe='/=*:')}"
            )
        return _json(
            stored.to_dict(), 201 if created else 200, etag=stored.revision, location=location
        )

    async def delete_policy(self, tenant: str, resource: str) -> Response:
        await self.plane.delete_policy(tenant, resource, expected_revision=_if_match())
        return _no_content()

    # API keys.

    async def list_keys(self, tenant: str) -> Response:
        keys = await self.plane.list_keys(tenant)
        return _json({"keys": [key.to_dict() for key in keys]})

    async def issue_key(self, tenant: str) -> Response:
        body = await _body(frozenset({"description"}), required=False)
        record, secret = await self.plane.issue_key(tenant, body.get("description"))
        response = _json({**record.to_dict(), "key": secret}, 201)
        # The key is shown once: no cache may keep a copy.
        response.headers["Cache-Control"] = "no-store"
        return response

    async def revoke_key(self, tenant: str, key_id: str) -> Response:
        if "If-Match" in request.headers:
            raise InvalidRequest("API keys have no revision; send no If-Match", field="If-Match")
        await self.plane.revoke_key(tenant, key_id)
        return _no_content()

    # Gateways and resets.

    async def list_gateways(self) -> Response:
        gateways = await self.plane.list_gateways()
        return _json({"gateways": [gateway.to_dict() for gateway in gateways]})

    async def reset(self, tenant: str) -> Response:
        body = await _body(frozenset({"resource"}), required=False)
        record = await self.plane.reset(tenant, body.get("resource"))
        return _json(record.to_dict(), 202)


# Parsing requests.


def _presented_key() -> str | None:
    """The key from X-API-Key or Authorization: Bearer; never from the query string."""
    key = request.headers.get("X-API-Key", "").strip()
    if key:
        return key
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


def _check_query(accepted: frozenset[str]) -> None:
    for name in request.args:
        if name not in accepted:
            where = f"; this route takes {', '.join(sorted(accepted))}" if accepted else ""
            raise InvalidRequest(f"{name}: unknown query parameter{where}", field=name)
        if len(request.args.getlist(name)) > 1:
            raise InvalidRequest(f"{name} is given more than once", field=name)


def _page_size(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        raise InvalidRequest(f"limit must be an integer, got {raw!r}", field="limit")
    return int(raw)


def _if_match() -> int | None:
    """The revision in ``If-Match: "<revision>"``, or None without the header."""
    values = request.headers.getlist("If-Match")
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequest("If-Match is given more than once", field="If-Match")
    raw = _as_sent(values[0])
    # Only HTTP's own white space surrounds a value; str.strip() would take more.
    value = raw.strip(" \t")
    digits = value[1:-1]
    if (
        len(value) < 3
        or value[0] != '"'
        or value[-1] != '"'
        or not (digits.isascii() and digits.isdigit())
        or len(digits) > 19
    ):
        raise InvalidRequest(
            f'If-Match must be one revision in double quotes, like "42", got {raw!r}',
            field="If-Match",
        )
    return int(digits)


def _as_sent(value: str) -> str:
    """A header value as its client wrote it: UTF-8 if its bytes are, else ISO-8859-1.

    Header values reach the application decoded as ISO-8859-1, byte for byte,
    which turns UTF-8 text into mojibake.
    """
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


async def _body(fields: frozenset[str] | None, *, required: bool) -> dict[str, Any]:
    """The JSON object in the body, which may hold only ``fields`` (None: any).

    Without ``required``, an empty body stands for an empty object.
    """
    data = await request.get_data(cache=False, as_text=False)
    if not data.strip() and not required:
        return {}
    document = parse_object(data if isinstance(data, bytes) else data.encode())
    if fields is None:
        return document
    unknown = sorted(set(document) - fields)
    if unknown:
        raise InvalidRequest(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)};"
            f" this body takes {', '.join(sorted(fields))}",
            field=unknown[0],
        )
    return document


# Answers.


def _json(
    document: Mapping[str, Any],
    status: int = 200,
    *,
    etag: int | None = None,
    location: str | None = None,
) -> Response:
    response = Response(json.dumps(document), status, content_type=_JSON)
    if etag is not None:
        response.headers["ETag"] = f'"{etag}"'
    if location is not None:
        response.headers["Location"] = location
    return response


def _no_content() -> Response:
    return Response(b"", 204)


def _error(error: HeliosError) -> Response:
    response = Response(
        error_body(error.http_status, error.message, error.field),
        error.http_status,
        content_type=_JSON,
    )
    if isinstance(error, MethodNotAllowed):
        response.headers["Allow"] = ", ".join(error.allowed)
    if isinstance(error, Unauthenticated):
        response.headers["WWW-Authenticate"] = 'Bearer realm="helios-control"'
    retry_after = getattr(error, "retry_after_seconds", None)
    if error.http_status == 503 and retry_after:
        response.headers["Retry-After"] = str(retry_after)
    return response


async def _helios_error(error: HeliosError) -> Response:
    return _error(error)


async def _http_error(error: http_errors.HTTPException) -> Response:
    """Quart's own errors (routing, body size) in the API's error shape."""
    if isinstance(error, http_errors.MethodNotAllowed):
        allowed = tuple(sorted(error.valid_methods or ()))
        return _error(MethodNotAllowed(request.method, allowed))
    if isinstance(error, http_errors.NotFound):
        return _error(NotFound(f"no route for {request.path!r}"))
    if isinstance(error, http_errors.RequestEntityTooLarge):
        return _error(PayloadTooLarge(f"body must be at most {MAX_BODY_BYTES} bytes", field="body"))
    status = error.code or 500
    response = Response(error_body(status, error.name.lower()), status, content_type=_JSON)
    return response


async def _unexpected_error(error: Exception) -> Response:
    log.error("%s %s failed", request.method, request.path, exc_info=error)
    return _error(HeliosError("internal error"))


# The server.


class _HypercornLog(hypercorn.logging.Logger):
    """hypercorn's messages under Helios's logger; its start-up lines only at DEBUG."""

    async def info(self, message: str, *args: Any, **kwargs: Any) -> None:
        await self.debug(message, *args, **kwargs)


class _HypercornConfig(Config):
    """hypercorn's settings, serving sockets that Helios has already bound."""

    def __init__(self, sockets: list[socket.socket], tls: tuple[str, str] | None) -> None:
        super().__init__()
        self._sockets = sockets
        if tls is not None:
            self.certfile, self.keyfile = tls

    def create_sockets(self) -> Sockets:
        if self.ssl_enabled:
            return Sockets(secure_sockets=self._sockets, insecure_sockets=[], quic_sockets=[])
        return Sockets(secure_sockets=[], insecure_sockets=self._sockets, quic_sockets=[])


class ControlHttpServer:
    """Serves the control plane's REST application on hypercorn's trio worker.

    :meth:`drain` stops accepting connections; requests in flight finish
    within ``grace_seconds``; :meth:`wait_closed` waits for the end.
    """

    def __init__(
        self,
        app: QuartTrio,
        *,
        grace_seconds: float = 5.0,
        tls: tuple[str, str] | None = None,
    ) -> None:
        """``tls``: paths of the PEM certificate chain and private key, to serve HTTPS."""
        self.app = app
        self.grace_seconds = grace_seconds
        self.tls = tls
        self._draining = trio.Event()
        self._closed = trio.Event()

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and serve until drained or cancelled.

        Reports the bound address (so a caller that asked for port 0 learns
        the real port).
        """
        try:
            sockets = await _listen(host, port)
            try:
                config = self._config(sockets)
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._serve, config)
                    name = sockets[0].getsockname()
                    task_status.started((str(name[0]), int(name[1])))
            finally:
                # hypercorn has taken (detached) the sockets it serves; the rest close here.
                for sock in sockets:
                    sock.close()
        finally:
            self._closed.set()

    # hypercorn types task_status with trio's private class.
    async def _serve(self, config: Config, *, task_status: Any) -> None:
        await hypercorn.trio.serve(
            self.app, config, shutdown_trigger=self._draining.wait, task_status=task_status
        )

    def _config(self, sockets: list[socket.socket]) -> Config:
        config = _HypercornConfig(sockets, self.tls)
        # Helios keeps its own access log; hypercorn's errors go to Helios's
        # logger, and nothing touches the logging configuration.
        config.accesslog = None
        config.errorlog = logging.getLogger("helios.control.http")
        config.logger_class = _HypercornLog
        config.graceful_timeout = self.grace_seconds
        config.include_server_header = False
        config.wsgi_max_body_size = MAX_BODY_BYTES
        return config

    def drain(self) -> None:
        """Stop accepting connections; requests in flight finish."""
        self._draining.set()

    async def wait_closed(self) -> None:
        """Wait until the server has stopped (after :meth:`drain`, or cancellation)."""
        await self._closed.wait()


async def _listen(host: str, port: int) -> list[socket.socket]:
    """Bound, listening sockets for ``host:port``, as hypercorn takes them."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host, backlog=1024)
    except OSError as error:
        raise OSError(
            error.errno,
            f"cannot listen on {host}:{port} (set by control.http_host, control.http_port):"
            f" {error.strerror or error}",
        ) from None
    sockets = []
    for listener in listeners:
        sock = listener.socket
        sockets.append(socket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach()))
    return sockets
