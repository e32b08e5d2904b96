"""The gateway's gRPC services: Helios's RateLimitService and Envoy's RLS v3.

They are served on Helios's own gRPC listener (:mod:`helios.grpc.transport`),
bound to the configured host.

Errors: a :class:`~helios.errors.HeliosError` becomes the gRPC status its
``grpc_code`` names, with its message; a denial is a normal reply. Only an
error that is no caller's fault is logged, once.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, TypeVar

import trio
from opentelemetry import context, trace
from purerpc.grpclib.exceptions import RpcFailedError
from purerpc.grpclib.status import Status, StatusCode

from helios.core.decision import Decision
from helios.core.names import MAX_COST, check_name
from helios.errors import HeliosError, InvalidRequest, Unauthenticated
from helios.gateway.service import Check, Gateway, Quota
from helios.gateway.spans import (
    DECISION_SPAN,
    note_decision,
    note_descriptors,
    note_outcomes,
    note_quota,
)
from helios.grpc import envoy
from helios.grpc.generated.envoy.service.ratelimit.v3 import rls_grpc
from helios.grpc.generated.envoy.service.ratelimit.v3.rls_pb2 import (
    RateLimitRequest,
    RateLimitResponse,
)
from helios.grpc.generated.helios.v1 import ratelimit_grpc
from helios.grpc.generated.helios.v1 import ratelimit_pb2 as pb
from helios.grpc.transport import DEFAULT_MAX_MESSAGE_BYTES, GrpcListener
from helios.tracing import Tracing, failed

if TYPE_CHECKING:
    from helios.gateway.metrics import GatewayMetrics

log = logging.getLogger("helios.grpc")

T = TypeVar("T")

DEFAULT_MAX_BATCH_CHECKS = 1000


def api_key(metadata: Any) -> str | None:
    """The key from ``x-api-key``, else ``authorization: Bearer``; blank counts as absent.

    As over HTTP, ``x-api-key`` wins over ``authorization`` (which a proxy may
    pass on for another service). One of them given twice must hold the same
    key each time: two different keys in it raise :class:`Unauthenticated`
    rather than one of them counting.
    """
    keys: dict[str, str] = {}
    for name, value in metadata:
        if not isinstance(value, str):
            continue  # binary (-bin) metadata
        name = name.lower()
        if name == "x-api-key":
            given = value.strip()
        elif name == "authorization" and value[:7].lower() == "bearer ":
            given = value[7:].strip()
        else:
            continue
        if not given:
            continue
        if keys.setdefault(name, given) != given:
            raise Unauthenticated("the API key is given more than once", field="api_key")
    return keys.get("x-api-key") or keys.get("authorization")


def _status(error: HeliosError) -> RpcFailedError:
    return RpcFailedError(Status(StatusCode[error.grpc_code], error.message))


# A gRPC caller without a key is told about metadata; the gateway's own
# message names the HTTP headers and query parameter.
_NO_KEY = Status(
    StatusCode.UNAUTHENTICATED,
    "an API key is required (metadata x-api-key or authorization: Bearer)",
)


def _cost(cost: int) -> int:
    if cost == 0:
        return 1
    if cost > MAX_COST:
        raise _cost_error(cost)
    return cost


def _cost_error(cost: int) -> InvalidRequest:
    return InvalidRequest(f"cost must be an integer from 1 to {MAX_COST}, got {cost}", field="cost")


def _check(request: pb.AllowRequest) -> Check:
    return Check(request.tenant, request.resource or "default", _cost(request.cost))


def decision_message(tenant: str, resource: str, decision: Decision) -> pb.Decision:
    return pb.Decision(**_decision_fields(tenant, resource, decision))


def _decision_fields(tenant: str, resource: str, decision: Decision) -> dict[str, Any]:
    """The fields of a Decision message for ``decision``."""
    return {
        "allowed": decision.allowed,
        "tenant": tenant,
        "resource": resource,
        "policy": decision.policy.name,
        "limit": decision.band.limit,
        "remaining": decision.remaining,
        "reset_seconds": decision.reset_seconds,
        "reset_time": decision.reset_time,
        "retry_after_seconds": decision.retry_after_seconds,
        "retry_after_ms": decision.retry_after_ms,
        "mode": decision.mode,
        "shadow": decision.policy.shadow,
        "would_allow": decision.would_allow,
        "window_seconds": decision.band.window_seconds,
    }


# A batch check as the servicer parses it: (tenant, resource, cost), the
# fields of a Check in a plain tuple, which is cheaper to make.
_Triple = tuple[str, str, int]


def _parse_checks(message: pb.AllowBatchRequest) -> list[_Triple | HeliosError]:
    """Each check of a batch, or the error that answers it (as :func:`_check` would)."""
    checks: list[_Triple | HeliosError] = []
    append = checks.append
    for raw in message.checks:
        cost = raw.cost or 1
        if cost > MAX_COST:
            append(_cost_error(cost))
        else:
            append((raw.tenant, raw.resource or "default", cost))
    return checks


def batch_message(
    checks: Sequence[_Triple | HeliosError], outcomes: Sequence[Decision | HeliosError]
) -> pb.AllowBatchResponse:
    """The answer to a batch: each check, in order, with its outcome.

    The same fields as :func:`decision_message`, built for less: this runs
    once per check. Each result is made in place in the response (one made
    apart would be copied in). A check of a pair seen earlier in the batch,
    under the same policy and band, starts as a copy of the latest result of
    that pair: its checks are decided at one instant, so only some figures
    differ, and only those are set.
    """
    response = pb.AllowBatchResponse()
    add = response.results.add
    # The latest decision and result of each pair but the current one.
    seen: dict[tuple[str, str], tuple[Decision, pb.Decision]] = {}
    # The current pair (of the latest decided check), its decision and result.
    tenant = resource = ""
    last: Decision | None = None
    previous: pb.Decision | None = None
    for check, outcome in zip(checks, outcomes, strict=True):
        if type(outcome) is not Decision:
            assert isinstance(outcome, HeliosError)
            add(error=_check_error(outcome))
            continue
        # Checks of one pair mostly come in a row: two comparisons with the
        # current pair are cheaper than a tuple and a dict lookup.
        if check[0] != tenant or check[1] != resource:  # type: ignore[index]
            if last is not None:
                seen[tenant, resource] = last, previous  # type: ignore[assignment]
            tenant, resource, _ = check  # type: ignore[misc]
            last, previous = seen.get((tenant, resource), (None, None))
        if last is None or outcome.policy is not last.policy or outcome.band is not last.band:
            result = add(**_decision_fields(tenant, resource, outcome))
        else:
            result = add()
            result.CopyFrom(previous)
            result.remaining = outcome.remaining
            if outcome.reset_seconds != last.reset_seconds:
                result.reset_seconds = outcome.reset_seconds
            if outcome.reset_time != last.reset_time:
                result.reset_time = outcome.reset_time
            if outcome.allowed != last.allowed:
                result.allowed = outcome.allowed
            if outcome.would_allow != last.would_allow:
                result.would_allow = outcome.would_allow
            if outcome.retry_after_ms != last.retry_after_ms:
                result.retry_after_ms = outcome.retry_after_ms
            if outcome.retry_after_seconds != last.retry_after_seconds:
                result.retry_after_seconds = outcome.retry_after_seconds
            if outcome.mode != last.mode:
                result.mode = outcome.mode
        last, previous = outcome, result
    return response


def _check_error(error: HeliosError) -> pb.CheckError:
    return pb.CheckError(code=error.grpc_code, message=error.message, field=error.field or "")


def quota_message(quota: Quota) -> pb.Quota:
    decision = quota.decision
    return pb.Quota(
        tenant=quota.tenant,
        resource=quota.resource,
        policy=decision.policy.name,
        algorithm=decision.policy.algorithm,
        limit=decision.limit,
        remaining=decision.remaining,
        reset_seconds=decision.reset_seconds,
        reset_time=decision.reset_time,
        shadow=decision.shadow,
        mode=decision.mode,
        bands=[
            pb.BandQuota(
                limit=band.band.limit,
                window=band.band.describe().split("/", 1)[1],
                remaining=band.remaining,
                reset_seconds=band.reset_seconds,
                window_seconds=band.band.window_seconds,
            )
            for band in quota.bands
        ],
    )


class _Calls:
    """Runs each call: the client's deadline, errors as gRPC statuses, and its span.

    With tracing on, a sampled call gets a SERVER span (``helios.decide``, or
    ``helios.quota`` for GetQuota) whose parent comes from the ``traceparent``
    metadata; the servicers note the decision on it (see helios.gateway.spans).
    """

    def __init__(self, tracing: Tracing | None = None) -> None:
        self.tracing = tracing

    async def run(self, request: Any, call: Callable[[str | None], Awaitable[T]]) -> T:
        if self.tracing is None:
            return await self._run(request, call)
        return await self._traced(self.tracing, request, call)

    async def _run(self, request: Any, call: Callable[[str | None], Awaitable[T]]) -> T:
        try:
            key = api_key(request.custom_metadata)
        except HeliosError as error:
            raise _status(error) from None
        try:
            # A deadline the client set bounds the work done for it; the
            # client has given up by then, so the status is only a courtesy.
            timeout = request.timeout
            with trio.fail_after(timeout.total_seconds()) if timeout else nullcontext():
                return await call(key)
        except HeliosError as error:
            if key is None and type(error) is Unauthenticated:
                raise RpcFailedError(_NO_KEY) from None
            raise _status(error) from None
        except trio.TooSlowError:
            raise RpcFailedError(
                Status(StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed")
            ) from None
        except RpcFailedError:
            raise
        except Exception:
            log.exception("internal error answering %s", request.method_name)
            raise RpcFailedError(Status(StatusCode.INTERNAL, "internal error")) from None

    async def _traced(
        self, tracing: Tracing, request: Any, call: Callable[[str | None], Awaitable[T]]
    ) -> T:
        method = request.method_name
        name = "helios.quota" if method == "GetQuota" else "helios.decide"
        traceparent, tracestate = _trace_context(request.custom_metadata)
        span = tracing.start_server_span(name, traceparent, tracestate)
        if span is None:
            return await self._run(request, call)
        span.set_attributes(
            {"rpc.system": "grpc", "rpc.service": request.service_name, "rpc.method": method}
        )
        token = context.attach(trace.set_span_in_context(span))
        noted = DECISION_SPAN.set(span)
        code = StatusCode.OK
        try:
            return await self._run(request, call)
        except RpcFailedError as error:
            code = error.status.status_code
            span.set_attribute("helios.result", "error")
            if code in _SERVER_FAULTS:
                span.set_status(trace.StatusCode.ERROR, code.name)
            raise
        except BaseException as error:  # cancelled: the call was never answered
            failed(span, error)
            raise
        finally:
            DECISION_SPAN.reset(noted)
            context.detach(token)
            span.set_attribute("rpc.grpc.status_code", code.value)
            span.end()


# Statuses that are the server's fault (or its backend's), not the caller's.
_SERVER_FAULTS = frozenset({StatusCode.INTERNAL, StatusCode.UNAVAILABLE, StatusCode.UNKNOWN})


def _trace_context(metadata: Any) -> tuple[str | None, str | None]:
    """The W3C ``traceparent`` and ``tracestate`` of a call's metadata."""
    traceparent = tracestate = None
    for name, value in metadata or ():
        if isinstance(value, bytes):
            continue
        name = name.lower()
        if name == "traceparent":
            traceparent = value
        elif name == "tracestate":
            tracestate = value
    return traceparent, tracestate


class HeliosServicer(ratelimit_grpc.RateLimitServiceServicer):
    """helios.v1.RateLimitService: Allow, AllowBatch, GetQuota."""

    def __init__(self, gateway: Gateway, calls: _Calls, *, max_batch_checks: int) -> None:
        self.gateway = gateway
        self.calls = calls
        self.max_batch_checks = max_batch_checks

    async def Allow(  # type: ignore[override]
        self, message: pb.AllowRequest, request: Any
    ) -> pb.Decision:
        return await self.calls.run(request, lambda key: self._allow(message, key))

    async def _allow(self, message: pb.AllowRequest, key: str | None) -> pb.Decision:
        gateway = self.gateway
        owner = gateway.identify(key)
        check = _check(message)
        if gateway.remote is None:
            decision = gateway.decide(check, owner)
        else:
            decision = await gateway.decide_remote(check, owner)
        if self.calls.tracing is not None:
            note_decision(message.tenant, str(check.resource), decision)
        return decision_message(message.tenant, str(check.resource), decision)

    async def AllowBatch(  # type: ignore[override]
        self, message: pb.AllowBatchRequest, request: Any
    ) -> pb.AllowBatchResponse:
        return await self.calls.run(request, lambda key: self._allow_batch(message, key))

    async def _allow_batch(
        self, message: pb.AllowBatchRequest, key: str | None
    ) -> pb.AllowBatchResponse:
        gateway = self.gateway
        owner = gateway.identify(key)
        if not message.checks:
            raise InvalidRequest("checks must be a non-empty list", field="checks")
        if len(message.checks) > self.max_batch_checks:
            raise InvalidRequest(
                f"checks may hold at most {self.max_batch_checks} entries,"
                f" got {len(message.checks)}",
                field="checks",
            )
        checks = _parse_checks(message)
        valid = [check for check in checks if isinstance(check, tuple)]
        if gateway.remote is None:
            outcomes = gateway.decide_batch(valid, owner)
        else:
            valid_checks = [Check._make(check) for check in valid]
            outcomes = await gateway.decide_batch_remote(valid_checks, owner)
        if len(valid) != len(checks):
            # An invalid check answers itself, in its place.
            decided = iter(outcomes)
            outcomes = [next(decided) if isinstance(check, tuple) else check for check in checks]
        if self.calls.tracing is not None:
            note_outcomes(outcomes)
        return batch_message(checks, outcomes)

    async def GetQuota(  # type: ignore[override]
        self, message: pb.GetQuotaRequest, request: Any
    ) -> pb.Quota:
        return await self.calls.run(request, lambda key: self._get_quota(message, key))

    async def _get_quota(self, message: pb.GetQuotaRequest, key: str | None) -> pb.Quota:
        gateway = self.gateway
        owner = gateway.identify(key)
        tenant = check_name(message.tenant, "tenant")
        resource = message.resource or "default"
        if gateway.remote is None:
            quota = gateway.quota(tenant, resource, owner)
        else:
            quota = await gateway.quota_remote(tenant, resource, owner)
        if self.calls.tracing is not None:
            note_quota(quota)
        return quota_message(quota)


class EnvoyServicer(rls_grpc.RateLimitServiceServicer):
    """envoy.service.ratelimit.v3.RateLimitService: ShouldRateLimit (see helios.grpc.envoy)."""

    def __init__(self, gateway: Gateway, calls: _Calls) -> None:
        self.gateway = gateway
        self.calls = calls

    async def ShouldRateLimit(  # type: ignore[override]
        self, message: RateLimitRequest, request: Any
    ) -> RateLimitResponse:
        return await self.calls.run(request, lambda key: self._should_rate_limit(message, key))

    async def _should_rate_limit(
        self, message: RateLimitRequest, key: str | None
    ) -> RateLimitResponse:
        gateway = self.gateway
        owner = gateway.identify(key)
        if gateway.remote is None:
            response = envoy.should_rate_limit(gateway, message, owner)
        else:
            response = await envoy.should_rate_limit_remote(gateway, message, owner)
        if self.calls.tracing is not None:
            note_descriptors(
                message.domain,
                len(message.descriptors),
                response.overall_code == RateLimitResponse.Code.OVER_LIMIT,
                gateway.mode,
            )
        return response


class GrpcServer(GrpcListener):
    """The gateway's gRPC listener: Helios's RateLimitService and Envoy's RLS v3.

    With ``metrics``, each call answered is counted and timed there.
    """

    def __init__(
        self,
        gateway: Gateway,
        *,
        max_batch_checks: int = DEFAULT_MAX_BATCH_CHECKS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        metrics: GatewayMetrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.gateway = gateway
        self.calls = _Calls(tracing)
        super().__init__(
            {
                "helios.v1.RateLimitService": HeliosServicer(
                    gateway, self.calls, max_batch_checks=max_batch_checks
                ).service,
                "envoy.service.ratelimit.v3.RateLimitService": EnvoyServicer(
                    gateway, self.calls
                ).service,
            },
            max_message_bytes=max_message_bytes,
            observe=None if metrics is None else metrics.observe_grpc,
        )


async def serve_grpc(
    gateway: Gateway,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_batch_checks: int = DEFAULT_MAX_BATCH_CHECKS,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the gateway's gRPC APIs on ``host``:``port`` until cancelled.

    Reports ``(host, port)`` of the listener (the real port when 0 was asked).
    """
    server = GrpcServer(
        gateway, max_batch_checks=max_batch_checks, max_message_bytes=max_message_bytes
    )
    await server.serve(host, port, ssl_context=ssl_context, task_status=task_status)
