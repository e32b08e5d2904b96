"""The gateway's HTTP API (PRODUCT §4) on the lean HTTP server.

Routing, query and JSON parsing, and rendering of decisions with their
headers. Decisions themselves come from :class:`~helios.gateway.service.Gateway`.

With tracing on, the server calls :meth:`HttpApi.traced` instead of the API
itself: a span for each decision request, whose figures the renderers add
while the span is current (see :mod:`helios.tracing`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote, unquote_plus

from opentelemetry import context, trace

from helios import __version__
from helios.core.decision import Decision
from helios.core.names import coerce_cost, parse_cost
from helios.core.policy import Band, Policy
from helios.errors import HeliosError, InvalidRequest, MethodNotAllowed, NotFound, Unauthenticated
from helios.gateway.headers import structured_string, window_parameter
from helios.gateway.metrics import GatewayMetrics
from helios.gateway.service import Check, Gateway, Quota
from helios.gateway.spans import DECISION_SPAN, note_batch, note_decision, note_quota
from helios.jsonbody import parse_object
from helios.server.http import Request, Response
from helios.tracing import failed

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from helios.tracing import Tracing

# HEAD is not offered: it must not have side effects, and a decision charges.
log = logging.getLogger("helios.http")

_ALLOW_METHODS = ("GET", "POST")

_MAX_QUERY_PARAMETERS = 32

# Traced routes: path -> (span name, http.route). The quota route is matched by prefix.
_TRACED_ROUTES = {
    "/allow": ("helios.decide", "/allow"),
    "/api/v1/allow": ("helios.decide", "/api/v1/allow"),
    "/api/v1/allow/batch": ("helios.decide", "/api/v1/allow/batch"),
}
_QUOTA_PREFIX = "/api/v1/quota/"
_TRACED_QUOTA = ("helios.quota", "/api/v1/quota/{tenant}")


def error_body(status: int, message: str, field: str | None = None) -> bytes:
    body: dict[str, object] = {"error": message}
    if field is not None:
        body["field"] = field
    # ASCII-escaped: a message may quote caller input, which must not break encoding.
    return json.dumps(body).encode()


# A "%" not followed by two hexadecimal digits.
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def parse_query(query: str) -> dict[str, str]:
    """Decode a query string; a parameter given twice is an error."""
    params: dict[str, str] = {}
    if not query:
        return params
    parts = query.split("&")
    if len(parts) > _MAX_QUERY_PARAMETERS:
        raise InvalidRequest(f"at most {_MAX_QUERY_PARAMETERS} query parameters are accepted")
    # Most query strings need no decoding at all: one test of the whole
    # string spares two of each name and two of each value.
    encoded = "%" in query or "+" in query
    for part in parts:
        if not part:
            continue
        name, _, value = part.partition("=")
        if encoded:
            try:
                if "%" in name or "+" in name:
                    name = unquote_plus(name, errors="strict")
                if "%" in value or "+" in value:
                    value = unquote_plus(value, errors="strict")
            except UnicodeDecodeError:
                raise InvalidRequest("the query string is not valid UTF-8", field="query") from None
        if name in params:
            raise InvalidRequest(f"{name} is given more than once", field=name)
        params[name] = value
    return params


def _json_string(text: str) -> str:
    """``text`` as a JSON string literal."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text, ensure_ascii=False)


Endpoint = Callable[[Request], Response | Awaitable[Response]]


def _band_lines(sf_name: str, band: Band) -> tuple[str, str]:
    """A band's fixed header text: the X-RateLimit-Limit line, and the
    RateLimit-Policy line with the start of the RateLimit line (up to ``r=``)."""
    window = window_parameter(band)
    return (
        f"x-ratelimit-limit: {band.limit}\r\n",
        f"ratelimit-policy: {sf_name};q={band.limit};w={window}\r\nratelimit: {sf_name};r=",
    )


class _PolicyText:
    """What every answer decided by one policy says the same way, written once."""

    __slots__ = ("bands", "json_name", "sf_name")

    def __init__(self, policy: Policy) -> None:
        self.json_name = _json_string(policy.name)
        # A structured-field string (RFC 8941), for the RateLimit headers.
        self.sf_name = structured_string(policy.name)
        self.bands = [(band, *_band_lines(self.sf_name, band)) for band in policy.bands]


class HttpApi:
    """Routes HTTP requests to the gateway service."""

    def __init__(
        self,
        gateway: Gateway,
        metrics: GatewayMetrics,
        *,
        max_batch_checks: int,
        tracing: Tracing | None = None,
    ) -> None:
        self.gateway = gateway
        self.metrics = metrics
        self.max_batch_checks = max_batch_checks
        self.tracing = tracing
        # Per policy object: its name as a JSON string and as the quoted
        # name of the RateLimit headers.
        self._policy_names: dict[Policy, _PolicyText] = {}
        # The routes of exact paths, as _route gives them; one dict lookup
        # answers the common request. Decisions in a remote backend (STRONG
        # mode) go to the async endpoints.
        remote = gateway.remote is not None
        self._routes: dict[str, tuple[str, Endpoint, tuple[str, ...] | None]] = {
            "/allow": ("/allow", self.allow_remote if remote else self.allow, _ALLOW_METHODS),
            "/api/v1/allow": (
                "/api/v1/allow",
                self.allow_remote if remote else self.allow,
                _ALLOW_METHODS,
            ),
            "/api/v1/allow/batch": (
                "/api/v1/allow/batch",
                self.batch_remote if remote else self.batch,
                ("POST",),
            ),
            "/health": ("/health", self.health, ("GET", "HEAD")),
            "/ready": ("/ready", self.ready, ("GET", "HEAD")),
        }

    async def __call__(self, request: Request) -> Response:
        started = time.perf_counter()
        route, endpoint, methods = self._routes.get(request.path) or self._route(request.path)
        try:
            if methods is not None and request.method not in methods:
                raise MethodNotAllowed(request.method, methods)
            result = endpoint(request)
            # A type check, not isinstance(result, Awaitable): this is the hot path.
            response = result if type(result) is Response else await result  # type: ignore[misc]
        except HeliosError as error:
            response = self.error(error)
        except Exception:
            # A bug, not a caller's fault: answered, logged and counted like
            # any other response (never with the request's query, which may
            # hold an API key).
            log.exception("internal error answering %s %s", request.method, route)
            response = Response(500, error_body(500, "internal error"))
        self.metrics.observe(route, response.status, time.perf_counter() - started)
        return response

    def traced(self, request: Request) -> Awaitable[Response]:
        """Answer as :meth:`__call__` does, in a span if the request is a sampled decision.

        A request that is not sampled gets no span at all; the renderers add
        the tenant, resource, result and mode to the span while it is current.
        Not a coroutine itself: it returns the answer's coroutine, so that a
        request that is not sampled costs no coroutine frame of its own.
        """
        tracing = self.tracing
        assert tracing is not None
        path = request.path
        traced = _TRACED_ROUTES.get(path)
        if traced is None:
            if not path.startswith(_QUOTA_PREFIX):
                return self(request)
            traced = _TRACED_QUOTA
        name, route = traced
        traceparent = request.header(b"traceparent")
        span: Span | None
        if traceparent is None:
            # The common case, decided with one random number.
            if not tracing.sample_root():
                return self(request)
            span = tracing.start_root_span(name)
        else:
            span = tracing.start_server_span(
                name, traceparent.decode("latin-1"), _header_text(request, b"tracestate")
            )
            if span is None:
                return self(request)
        return self._in_span(request, span, route)

    async def _in_span(self, request: Request, span: Span, route: str) -> Response:
        """Answer a sampled request with ``span`` current, then end the span."""
        # Current for OpenTelemetry too, so that Redis calls become its children.
        token = context.attach(trace.set_span_in_context(span))
        noted = DECISION_SPAN.set(span)
        try:
            response = await self(request)
        except BaseException as error:  # cancelled: the request was never answered
            failed(span, error)
            span.end()
            raise
        finally:
            DECISION_SPAN.reset(noted)
            context.detach(token)
        status = response.status
        span.set_attributes(
            {
                "http.request.method": request.method,
                "http.route": route,
                "http.response.status_code": status,
            }
        )
        if status != 200 and status != 429:
            span.set_attribute("helios.result", "error")
            if status >= 500:
                span.set_attribute("error.type", str(status))
                span.set_status(trace.StatusCode.ERROR)
        span.end()
        return response

    def _route(self, path: str) -> tuple[str, Endpoint, tuple[str, ...] | None]:
        """The route label (for metrics), its endpoint, and the methods it accepts.

        Exact paths are in ``_routes``; this answers the others. Unknown paths
        accept any method, so that they answer 404 rather than 405.
        """
        if path.startswith("/api/v1/quota/"):
            endpoint = self.quota_remote if self.gateway.remote is not None else self.quota
            return "/api/v1/quota", endpoint, ("GET", "HEAD")
        return "unknown", self.no_route, None

    # Endpoints. Each decision endpoint parses (and authenticates) first, then
    # decides in memory or, in the *_remote variant, in the remote backend.

    def allow(self, request: Request) -> Response:
        owner, check = self._allow_request(request)
        decision = self.gateway.decide(check, owner)
        return self.render_decision(str(check.tenant), str(check.resource), decision)

    async def allow_remote(self, request: Request) -> Response:
        owner, check = self._allow_request(request)
        decision = await self.gateway.decide_remote(check, owner)
        return self.render_decision(str(check.tenant), str(check.resource), decision)

    def _allow_request(self, request: Request) -> tuple[str | None, Check]:
        params = parse_query(request.query)
        owner = self.gateway.identify(_api_key(request, params))
        if request.method == "POST" and request.body.strip():
            check = _json_check(parse_json_object(request.body), "")
        else:
            # Positional: a keyword call of the tuple's __new__ costs more.
            check = Check(
                params.get("tenant"),
                params.get("resource", "default"),
                parse_cost(params.get("cost")),
            )
        return owner, check

    def batch(self, request: Request) -> Response:
        owner, checks = self._batch_request(request)
        valid = [check for check in checks if isinstance(check, Check)]
        return self._render_batch(checks, self.gateway.decide_batch(valid, owner))

    async def batch_remote(self, request: Request) -> Response:
        owner, checks = self._batch_request(request)
        valid = [check for check in checks if isinstance(check, Check)]
        return self._render_batch(checks, await self.gateway.decide_batch_remote(valid, owner))

    def _batch_request(self, request: Request) -> tuple[str | None, list[Check | HeliosError]]:
        params = parse_query(request.query)
        owner = self.gateway.identify(_api_key(request, params))
        document = parse_json_object(request.body)
        _known_fields(document, ("checks",), "")
        raw_checks = document.get("checks")
        if not isinstance(raw_checks, list) or not raw_checks:
            raise InvalidRequest("checks must be a non-empty list", field="checks")
        if len(raw_checks) > self.max_batch_checks:
            raise InvalidRequest(
                f"checks may hold at most {self.max_batch_checks} entries, got {len(raw_checks)}",
                field="checks",
            )
        checks: list[Check | HeliosError] = []
        for index, raw in enumerate(raw_checks):
            try:
                if not isinstance(raw, dict):
                    raise InvalidRequest(f"checks[{index}] must be an object", field="checks")
                checks.append(_json_check(raw, f"checks[{index}]."))
            except HeliosError as error:
                checks.append(error)
        return owner, checks

    def _render_batch(
        self, checks: list[Check | HeliosError], decisions: list[Decision | HeliosError]
    ) -> Response:
        if self.tracing is not None:
            note_batch(checks, decisions)
        decided = iter(decisions)
        results = []
        for check in checks:
            outcome = next(decided) if isinstance(check, Check) else check
            if isinstance(outcome, Decision):
                assert isinstance(check, Check)
                text = self.decision_json(str(check.tenant), str(check.resource), outcome)
                status = 200 if outcome.allowed else 429
                results.append(f'{text[:-1]}, "status": {status}}}')
            else:
                entry: dict[str, object] = {"error": outcome.message, "status": outcome.http_status}
                if outcome.field is not None:
                    entry["field"] = outcome.field
                results.append(json.dumps(entry))
        body = ('{"results": [' + ", ".join(results) + "]}").encode()
        return Response(200, body)

    def quota(self, request: Request) -> Response:
        owner, tenant, resource = self._quota_request(request)
        return self.render_quota(self.gateway.quota(tenant, resource, owner))

    async def quota_remote(self, request: Request) -> Response:
        owner, tenant, resource = self._quota_request(request)
        return self.render_quota(await self.gateway.quota_remote(tenant, resource, owner))

    def _quota_request(self, request: Request) -> tuple[str | None, str, str]:
        params = parse_query(request.query)
        owner = self.gateway.identify(_api_key(request, params))
        encoded = request.path[len("/api/v1/quota/") :]
        if _BAD_ESCAPE.search(encoded):
            raise InvalidRequest(
                "the tenant in the path holds a % that is not an escape (%XX)", field="tenant"
            )
        try:
            tenant = unquote(encoded, errors="strict")
        except UnicodeDecodeError:
            raise InvalidRequest(
                "the tenant in the path is not valid UTF-8", field="tenant"
            ) from None
        return owner, tenant, params.get("resource", "default")

    def no_route(self, request: Request) -> Response:
        raise NotFound(f"no route for {request.method} {request.path}")

    def health(self, request: Request) -> Response:
        gateway = self.gateway
        body = {"status": "ok", "role": gateway.role, "mode": gateway.mode, "version": __version__}
        return Response(200, json.dumps(body).encode())

    def ready(self, request: Request) -> Response:
        problems = self.gateway.ready_problems()
        if problems:
            return Response(503, json.dumps({"status": "not ready", "reasons": problems}).encode())
        body: dict[str, object] = {"status": "ready", "policies": len(self.gateway.policies)}
        warnings = self.gateway.ready_warnings()
        if warnings:
            body["warnings"] = warnings
        return Response(200, json.dumps(body).encode())

    # Rendering.

    def decision_json(self, tenant: str, resource: str, decision: Decision) -> str:
        """The decision JSON of PRODUCT §4.

        Written out by hand: this runs on every request, and a template is
        several times faster than building a dict for ``json.dumps``.
        """
        policy = decision.policy
        text = self._policy_names.get(policy) or self._name(policy)
        extra = ""
        if policy.shadow:
            extra = ', "shadow": true, "would_allow": ' + (
                "true" if decision.would_allow else "false"
            )
        if not decision.allowed:
            extra += ', "error": "rate limit exceeded"'
        return (
            f'{{"allowed": {"true" if decision.allowed else "false"}, '
            f'"tenant": {_json_string(tenant)}, "resource": {_json_string(resource)}, '
            f'"limit": {decision.band.limit}, "remaining": {decision.remaining}, '
            f'"reset_seconds": {decision.reset_seconds}, "reset_time": {decision.reset_time}, '
            f'"retry_after_seconds": {decision.retry_after_seconds}, '
            f'"retry_after_ms": {decision.retry_after_ms}, '
            f'"policy": {text.json_name}, "mode": "{decision.mode}"'
            f"{extra}}}"
        )

    def render_decision(self, tenant: str, resource: str, decision: Decision) -> Response:
        # The span is read here too, so that a request that is not sampled
        # costs no call.
        if self.tracing is not None and DECISION_SPAN.get() is not None:
            note_decision(tenant, resource, decision)
        body = self.decision_json(tenant, resource, decision).encode()
        headers = self._headers(decision)
        if not decision.allowed:
            return Response(
                429, body, headers + b"retry-after: %d\r\n" % decision.retry_after_seconds
            )
        return Response(200, body, headers)

    def render_quota(self, quota: Quota) -> Response:
        decision = quota.decision
        if self.tracing is not None:
            note_quota(quota)
        document = {
            "tenant": quota.tenant,
            "resource": quota.resource,
            "policy": decision.policy.name,
            "algorithm": decision.policy.algorithm,
            "limit": decision.limit,
            "remaining": decision.remaining,
            "reset_seconds": decision.reset_seconds,
            "reset_time": decision.reset_time,
            "shadow": decision.shadow,
            "mode": decision.mode,
            "bands": [
                {
                    "limit": band.band.limit,
                    "window": band.band.describe().split("/", 1)[1],
                    "remaining": band.remaining,
                    "reset_seconds": band.reset_seconds,
                }
                for band in quota.bands
            ],
        }
        body = json.dumps(document, ensure_ascii=False).encode()
        return Response(200, body, self._headers(decision))

    def _name(self, policy: Policy) -> _PolicyText:
        """The fixed text of a policy's answers, kept per policy."""
        if len(self._policy_names) > 10_000:
            self._policy_names.clear()
        text = self._policy_names[policy] = _PolicyText(policy)
        return text

    def _headers(self, decision: Decision) -> bytes:
        policy = decision.policy
        text = self._policy_names.get(policy) or self._name(policy)
        band = decision.band
        # The band is one of the policy's, almost always its only one.
        for entry in text.bands:
            if entry[0] is band:
                break
        else:
            entry = (band, *_band_lines(text.sf_name, band))
        _, limit_line, policy_lines = entry
        t = decision.retry_after_seconds if not decision.allowed else decision.reset_seconds
        return (
            f"{limit_line}"
            f"x-ratelimit-remaining: {decision.remaining}\r\n"
            f"x-ratelimit-reset: {decision.reset_time}\r\n"
            f"{policy_lines}{decision.remaining};t={t}\r\n"
        ).encode()

    def error(self, error: HeliosError) -> Response:
        headers = b""
        if isinstance(error, MethodNotAllowed):
            headers = b"allow: " + ", ".join(error.allowed).encode() + b"\r\n"
        retry_after = getattr(error, "retry_after_seconds", None)
        if error.http_status == 503 and retry_after:
            headers += b"retry-after: %d\r\n" % retry_after
        return Response(
            error.http_status, error_body(error.http_status, error.message, error.field), headers
        )


_CHECK_FIELDS = ("tenant", "resource", "cost")


def _json_check(document: dict[str, object], where: str) -> Check:
    """The check a JSON object asks for; ``where`` prefixes field names in errors.

    Only the check's three fields may be there: a misspelt one (``costs``)
    would otherwise be ignored, and the request charged the default cost.
    ``null`` is the same as a field left out.
    """
    _known_fields(document, _CHECK_FIELDS, where)
    resource = document.get("resource")
    return Check(
        document.get("tenant"),
        "default" if resource is None else resource,
        coerce_cost(document.get("cost")),
    )


def _known_fields(document: dict[str, object], known: tuple[str, ...], where: str) -> None:
    for name in document:
        if name not in known:
            raise InvalidRequest(
                f"unknown field {where}{name}; the fields are {', '.join(known)}",
                field=f"{where}{name}",
            )


def parse_json_object(body: bytes) -> dict[str, object]:
    """The JSON object in a request body (see :func:`helios.jsonbody.parse_object`)."""
    return parse_object(body)


def _api_key(request: Request, params: dict[str, str]) -> str | None:
    """The key from X-API-Key, Authorization: Bearer, or api_key, in that order.

    Surrounding white space is not part of a header value; an empty one
    counts as absent, so that a key given another way is still found.
    """
    key = (request.header(b"x-api-key") or b"").strip()
    if key and b"x-api-key" in request.repeated:
        _one_value(request, b"x-api-key")
    if not key:
        authorization = (request.header(b"authorization") or b"").strip()
        if authorization and b"authorization" in request.repeated:
            _one_value(request, b"authorization")
        if authorization[:7].lower() == b"bearer ":
            key = authorization[7:].strip()
    if key:
        return key.decode("utf-8", "surrogateescape")
    return params.get("api_key") or None


def _one_value(request: Request, name: bytes) -> None:
    """Refuse a key header sent more than once with different values: which one counts?"""
    values = {value.strip() for value in request.header_values(name)}
    if len(values) > 1:
        raise Unauthenticated("the API key is given more than once", field="api_key")


def _header_text(request: Request, name: bytes) -> str | None:
    value = request.header(name)
    return None if value is None else value.decode("latin-1")
