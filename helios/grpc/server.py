"""The gateway's gRPC listener: Helios's RateLimitService and Envoy's RLS v3.

purerpc's ``Server`` binds every interface and sets SO_REUSEPORT itself, so
Helios does not use it to listen: :class:`GrpcListener` opens its own listener
on the configured host (anyio, on trio) and hands each connection to
purerpc's connection handler, adapted so that a client's fault stays on its
own call and the connection goes on serving the others:

- a request message is at most ``max_message_bytes`` (4 MiB, gRPC's usual
  bound), checked on its length prefix before its bytes are buffered; a
  larger one is answered RESOURCE_EXHAUSTED (purerpc would close the
  connection);
- a compressed message (``grpc-encoding`` deflate or gzip) is inflated in its
  own format, to at most that bound; another encoding is answered
  UNIMPLEMENTED, with ``grpc-accept-encoding`` in the response headers, and a
  message that does not inflate INTERNAL, as the gRPC spec says;
- a message that does not parse, or a unary call with no message or more
  than one, is answered INVALID_ARGUMENT (purerpc would answer CANCELLED);
  headers that are not a gRPC request reset their stream;
- a call whose client resets its stream (a passed deadline, a cancelled
  call) is cancelled and logged nowhere: the client gave up, the server did
  nothing wrong;
- each call answered is reported to an observer (the gateway's metrics);
- on shutdown each connection stops taking calls, finishes and flushes those
  in flight, then closes.

Errors: a :class:`~helios.errors.HeliosError` becomes the gRPC status its
``grpc_code`` names, with its message; a denial is a normal reply. Only an
error that is no caller's fault is logged, once.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import trio
from anyio.streams.tls import TLSListener
from google.protobuf.message import DecodeError
from h2.errors import ErrorCodes  # type: ignore[import-untyped]
from h2.exceptions import (  # type: ignore[import-untyped]
    ProtocolError as H2ProtocolError,
)
from h2.exceptions import (
    StreamClosedError as H2StreamClosedError,
)
from opentelemetry import context, trace
from purerpc import Server, Service
from purerpc.grpc_proto import GRPCProtoSocket, GRPCProtoStream
from purerpc.grpc_socket import GRPCStreamState
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.connection import GRPCConnection
from purerpc.grpclib.events import (
    Event,
    MessageReceived,
    RequestEnded,
    RequestReceived,
    WindowUpdated,
)
from purerpc.grpclib.exceptions import RpcFailedError
from purerpc.grpclib.headers import HeaderDict
from purerpc.grpclib.status import Status, StatusCode
from purerpc.rpc import Cardinality
from purerpc.server import ConnectionHandler

from helios.core.decision import Decision
from helios.core.names import MAX_COST, check_name
from helios.errors import HeliosError, InvalidRequest, Unauthenticated
from helios.gateway.service import Check, Gateway, Quota
from helios.gateway.spans import DECISION_SPAN, note_decision, note_outcomes, note_quota
from helios.grpc import envoy
from helios.grpc.generated.envoy.service.ratelimit.v3 import rls_grpc
from helios.grpc.generated.envoy.service.ratelimit.v3.rls_pb2 import (
    RateLimitRequest,
    RateLimitResponse,
)
from helios.grpc.generated.helios.v1 import ratelimit_grpc
from helios.grpc.generated.helios.v1 import ratelimit_pb2 as pb
from helios.tracing import Tracing, failed

if TYPE_CHECKING:
    from helios.gateway.metrics import GatewayMetrics

log = logging.getLogger("helios.grpc")

T = TypeVar("T")

DEFAULT_MAX_BATCH_CHECKS = 1000


def api_key(metadata: Any) -> str | None:
    """The key from ``x-api-key``, else ``authorization: Bearer``; blank counts as absent."""
    bearer = None
    for name, value in metadata:
        if not isinstance(value, str):
            continue  # binary (-bin) metadata
        name = name.lower()
        if name == "x-api-key" and value.strip():
            return value.strip()
        if name == "authorization" and value[:7].lower() == "bearer " and bearer is None:
            bearer = value[7:].strip() or None
    return bearer


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
        key = api_key(request.custom_metadata)
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
            return envoy.should_rate_limit(gateway, message, owner)
        return await envoy.should_rate_limit_remote(gateway, message, owner)


# The transport: purerpc's connection, socket, stream and call handler, adapted.

# gRPC's usual bound on a request message (as grpc-core and grpc-go apply it).
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

# The encodings a request message may be compressed with, and the zlib window
# bits that read each: gRPC's "deflate" is the zlib format (RFC 1950), "gzip"
# has a gzip header and trailer (RFC 1952).
_INFLATE_WBITS = {"deflate": zlib.MAX_WBITS, "gzip": 16 + zlib.MAX_WBITS}
ACCEPT_ENCODINGS = ("identity", "deflate", "gzip")

# The route of a call to a method no service here serves: one label value,
# however many names clients make up.
UNKNOWN_ROUTE = "unknown"

# Called once per call answered: its route (``/<service>/<method>`` or
# UNKNOWN_ROUTE), the name of its status code, and the seconds from its parsed
# request message to its queued reply (None when no message was read).
CallObserver = Callable[[str, str, float | None], None]

_OK = Status(StatusCode.OK)
_NO_TIME = datetime.timedelta(0)
_INTERNAL = Status(StatusCode.INTERNAL, "internal error")


def _refusal(code: StatusCode, message: str) -> RpcFailedError:
    return RpcFailedError(Status(code, message))


class _Refused(MessageReceived):  # type: ignore[misc]
    """A request message the server does not read, and the status that answers its call.

    It takes a message's place on its stream, with no flow-controlled bytes
    of its own (the connection has handed them back already).
    """

    def __init__(self, stream_id: int, status: Status) -> None:
        super().__init__(stream_id, b"", 0)
        self.status = status


class _Reset(Event):  # type: ignore[misc]
    """The client reset a stream: it has abandoned the call."""

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class _MessageReader:
    """Splits the data of one request stream into its length-prefixed messages.

    A message may hold at most ``max_bytes``, as sent and, when compressed,
    once inflated. The bound is checked on each message's 5-byte prefix,
    before its bytes arrive, and inflating stops one byte past it, so a small
    compressed message cannot make the server hold a large one.
    """

    __slots__ = ("_buffer", "_encoding", "_max_bytes", "refused", "unacknowledged")

    def __init__(self, encoding: str | None, max_bytes: int) -> None:
        self._encoding = encoding
        self._max_bytes = max_bytes
        # The start of a message whose bytes have not all arrived.
        self._buffer = bytearray()
        # Flow-controlled bytes received and not yet handed on with a message.
        self.unacknowledged = 0
        self.refused = False

    def feed(self, data: bytes, flow_controlled_length: int) -> list[bytes]:
        """The messages ``data`` completes, in order.

        Raises :class:`RpcFailedError` with the status that answers the call
        when a message breaks the bound or does not inflate.
        """
        self.unacknowledged += flow_controlled_length
        buffer: bytes | bytearray = data
        if self._buffer:
            self._buffer += data
            buffer = self._buffer
        messages = []
        start = 0
        while len(buffer) - start >= 5:
            length = int.from_bytes(buffer[start + 1 : start + 5], "big")
            if length > self._max_bytes:
                raise self._too_large(f", got {length}")
            end = start + 5 + length
            if end > len(buffer):
                break
            message = bytes(buffer[start + 5 : end])
            messages.append(self._inflate(message) if buffer[start] else message)
            start = end
        if buffer is self._buffer:
            del self._buffer[:start]
        elif start < len(data):
            self._buffer = bytearray(data[start:])
        return messages

    def refuse(self) -> int:
        """Drop what is buffered; the flow-controlled bytes that frees."""
        self.refused = True
        self._buffer = bytearray()
        freed, self.unacknowledged = self.unacknowledged, 0
        return freed

    def _inflate(self, data: bytes) -> bytes:
        encoding = self._encoding
        wbits = _INFLATE_WBITS.get(encoding or "identity")
        if wbits is None:
            if encoding in (None, "identity"):
                # As the gRPC spec asks: a compressed message without an encoding.
                raise _refusal(
                    StatusCode.INTERNAL,
                    "the request message is compressed, but grpc-encoding names no compression",
                )
            # The spec's answer; grpc-accept-encoding in the response headers
            # says what would do.
            raise _refusal(
                StatusCode.UNIMPLEMENTED,
                f"grpc-encoding must be one of {', '.join(ACCEPT_ENCODINGS)}, got {encoding!r}",
            )
        inflater = zlib.decompressobj(wbits)
        try:
            message = inflater.decompress(data, self._max_bytes + 1)
        except zlib.error:
            message = b""
        else:
            if len(message) > self._max_bytes:
                raise self._too_large(" once inflated")
            if inflater.eof:
                return message
        raise _refusal(StatusCode.INTERNAL, f"the request message does not inflate as {encoding}")

    def _too_large(self, detail: str) -> RpcFailedError:
        return _refusal(
            StatusCode.RESOURCE_EXHAUSTED,
            f"the request message must be at most {self._max_bytes} bytes{detail}",
        )


class _Connection(GRPCConnection):  # type: ignore[misc]
    """purerpc's HTTP/2 connection, where a faulty request stays on its own stream.

    purerpc raises out of the connection for a request whose headers do not
    parse, a message over its bound, or one that does not inflate, which
    closes the connection and every call on it. Here a request whose headers
    do not parse is reset; a message that cannot be read is refused on its
    stream (:class:`_Refused`), and the stream's later data is dropped. A
    stream the client resets becomes a :class:`_Reset` event.
    """

    def __init__(self, config: GRPCConfiguration, max_message_bytes: int) -> None:
        super().__init__(config)
        self.max_message_bytes = max_message_bytes
        self.message_read_buffers: dict[int, _MessageReader] = {}

    def _request_received(self, event: Any) -> list[Any]:
        stream_id = event.stream_id
        try:
            request = RequestReceived.parse_from_stream_id_and_headers_destructive(
                stream_id, HeaderDict(event.headers)
            )
        except Exception:  # purerpc's parser fails in many ways on bad headers
            request = None
        if request is None or (request.timeout is not None and request.timeout < _NO_TIME):
            # Not a gRPC request (method, path, content type, te, grpc-timeout
            # or binary metadata are wrong): there is no call to answer.
            log.debug("reset a gRPC stream whose request headers are not a call's")
            self.h2_connection.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return []
        # Headers that end the stream (no message) are answered as such: the
        # StreamEnded event that follows becomes RequestEnded.
        self.message_read_buffers[stream_id] = _MessageReader(
            request.message_encoding, self.max_message_bytes
        )
        return [request]

    def _data_received(self, event: Any) -> list[Any]:
        stream_id = event.stream_id
        reader = self.message_read_buffers.get(stream_id)
        if reader is None or reader.refused:
            # The stream was refused or answered early: drop its data.
            self.h2_connection.acknowledge_received_data(event.flow_controlled_length, stream_id)
            return []
        try:
            messages = reader.feed(event.data, event.flow_controlled_length)
        except RpcFailedError as error:
            self.h2_connection.acknowledge_received_data(reader.refuse(), stream_id)
            return [_Refused(stream_id, error.status)]
        if not messages:
            return []
        # The stream hands the flow-controlled bytes back as it reads its
        # messages, all with the first.
        events = [MessageReceived(stream_id, message, 0) for message in messages]
        events[0].flow_controlled_length = reader.unacknowledged
        reader.unacknowledged = 0
        return events

    def _stream_reset(self, event: Any) -> list[Any]:
        self.message_read_buffers.pop(event.stream_id, None)
        return [_Reset(event.stream_id)]

    def _trailers_received(self, event: Any) -> list[Any]:
        # A gRPC request has no trailers; purerpc would parse them as a
        # response's. The StreamEnded event that follows ends the request.
        return []


class _StrictStream(GRPCProtoStream):  # type: ignore[misc]
    """A server stream: a refused or unparsable message fails its call with a status.

    :attr:`scope` holds the call's work; it is cancelled when the client
    resets the stream.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.scope = trio.CancelScope()

    async def receive_event(self) -> Any:
        event = await self._receive()
        kind = type(event)
        if kind is MessageReceived:
            message = self._incoming_message_type()
            try:
                message.ParseFromString(event.data)
            except DecodeError:
                raise _refusal(
                    StatusCode.INVALID_ARGUMENT, "the request message does not parse"
                ) from None
            event.data = message
        elif kind is _Refused:
            raise RpcFailedError(event.status)
        return event

    async def answer(self, reply: Any, status: Status) -> None:
        """Send the response headers, ``reply`` (unless None) and ``status``."""
        await self.start_response()
        if reply is not None:
            await self.send_message(reply)
        await self.close(status)
        if self._state is GRPCStreamState.HALF_CLOSED_LOCAL:
            # Answered while the client is still sending (a refused message,
            # an unknown method): ask it to stop, as HTTP/2 allows after a
            # complete response (RFC 9113, section 8.1).
            self._grpc_connection.reset_stream(self._stream_id, ErrorCodes.NO_ERROR)
            self._grpc_connection.message_read_buffers.pop(self._stream_id, None)
            self._forget()
            await self._socket.flush()

    def abandon(self) -> None:
        """The client reset the stream: stop the call's work, answer nothing."""
        self._forget()
        self.scope.cancel()

    def _forget(self) -> None:
        self._state = GRPCStreamState.CLOSED
        self._grpc_socket._streams.pop(self._stream_id, None)

    # purerpc's, except that a stream already forgotten is not an error.

    def _close_remote(self) -> None:
        if self._state is GRPCStreamState.OPEN:
            self._state = GRPCStreamState.HALF_CLOSED_REMOTE
        elif self._state is GRPCStreamState.HALF_CLOSED_LOCAL:
            self._forget()

    def _close_local(self) -> None:
        if self._state is GRPCStreamState.OPEN:
            self._state = GRPCStreamState.HALF_CLOSED_LOCAL
        elif self._state is GRPCStreamState.HALF_CLOSED_REMOTE:
            self._forget()


class _StrictSocket(GRPCProtoSocket):  # type: ignore[misc]
    """purerpc's server socket, with :class:`_Connection` and its own event loop."""

    StreamClass = _StrictStream

    def __init__(
        self, config: GRPCConfiguration, stream: anyio.abc.SocketStream, max_message_bytes: int
    ) -> None:
        super().__init__(config, stream)
        # Helios's connection in place of purerpc's, before a byte is read.
        connection = _Connection(config, max_message_bytes)
        self._grpc_connection = self._socket._grpc_connection = connection

    async def listen(self) -> AsyncIterator[_StrictStream]:
        """Each call's stream as it starts, until the client closes the connection.

        Each event goes to its stream's (unbounded) queue without a
        checkpoint, so no stream can be answered and forgotten between the
        events of one read. Events of a stream already forgotten are dropped.
        """
        connection = self._grpc_connection
        socket = self._socket
        streams: dict[int, _StrictStream] = self._streams
        while True:
            try:
                data = await socket.recv(self._receive_buffer_size)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            try:
                events = connection.receive_data(data)
            except (H2ProtocolError, UnicodeDecodeError) as error:
                # The client broke HTTP/2 (or sent headers that are not
                # UTF-8): h2 may have queued a GOAWAY, sent as the connection
                # closes; calls in flight cannot be answered.
                log.debug("closing a gRPC connection: %s", error)
                for abandoned in list(streams.values()):
                    abandoned.abandon()
                await socket.flush()
                return
            await socket.flush()
            for event in events:
                kind = type(event)
                if kind is RequestReceived:
                    call = self._allocate_stream(event.stream_id)
                    # Recorded as purerpc's _receive would, for the handler.
                    call._start_stream_event = event
                    yield call
                    continue
                stream = streams.get(event.stream_id)
                if kind is WindowUpdated:
                    if event.stream_id == 0:
                        for waiting in streams.values():
                            waiting._flow_control_update_event.set()
                    elif stream is not None:
                        stream._flow_control_update_event.set()
                elif stream is None:
                    continue
                elif kind is _Reset:
                    stream.abandon()
                else:
                    stream._incoming_events[0].send_nowait(event)
                    if kind is RequestEnded:
                        stream._close_remote()


async def _unary_message(stream: _StrictStream, message_type: Any) -> Any:
    """The one request message of a unary call."""
    stream.expect_message_type(message_type)
    event = await stream.receive_event()
    if type(event) is not MessageReceived:
        raise _refusal(StatusCode.INVALID_ARGUMENT, "the call holds no request message")
    if type(await stream.receive_event()) is not RequestEnded:
        raise _refusal(StatusCode.INVALID_ARGUMENT, "a unary call holds one request message")
    return event.data


class _Handler(ConnectionHandler):  # type: ignore[misc]
    """purerpc's connection handler on Helios's listener, with Helios's own call handling.

    Each call runs in its stream's cancel scope and is answered with the
    status its method raised (a HeliosError, a refused message); a call the
    client abandons (it reset the stream) stops and answers nothing, and is
    not an error. Only unary methods are served.
    """

    def __init__(
        self,
        services: dict[str, Service],
        server: GrpcListener,
        *,
        max_message_bytes: int,
        observe: CallObserver | None,
    ) -> None:
        # ConnectionHandler keeps statistics on a purerpc Server; give it one
        # that never listens.
        super().__init__(services, Server(port=0))
        self.config = GRPCConfiguration(client_side=False, message_accept_encoding=ACCEPT_ENCODINGS)
        self._helios = server
        self._max_message_bytes = max_message_bytes
        self._observe = observe
        # (service, method) -> (route, method function, request message type)
        self._methods: dict[tuple[str, str], tuple[str, Any, Any]] = {}
        for service_name, service in services.items():
            for method_name, (function, signature) in service.methods.items():
                if signature.cardinality is not Cardinality.UNARY_UNARY:
                    raise ValueError(f"{service_name}/{method_name}: only unary methods are served")
                route = f"/{service_name}/{method_name}"
                self._methods[service_name, method_name] = (
                    route,
                    function,
                    signature.request_type,
                )

    async def __call__(self, stream: anyio.abc.SocketStream) -> None:
        helios = self._helios
        # Draining cancels this scope: the connection takes no new calls, its
        # calls in flight finish and their replies are flushed, then it closes.
        listening = trio.CancelScope()
        helios.connection_opened(listening)
        try:
            async with (
                _StrictSocket(self.config, stream, self._max_message_bytes) as grpc_socket,
                anyio.create_task_group() as task_group,
            ):
                with listening:
                    async for grpc_stream in grpc_socket.listen():
                        task_group.start_soon(self.request_received, grpc_stream)
        except Exception as error:
            if not _peer_went_away(error):
                log.warning("gRPC connection failed", exc_info=True)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            helios.connection_closed(listening)

    async def request_received(self, stream: _StrictStream) -> None:
        """Answer one call, and report it to the observer."""
        request = stream.start_stream_event
        method = self._methods.get((request.service_name, request.method_name))
        route = UNKNOWN_ROUTE if method is None else method[0]
        # Unless the call is answered, its client abandoned it.
        code = StatusCode.CANCELLED
        seconds: float | None = None
        with stream.scope:
            try:
                started, reply, status = await self._run(stream, request, method)
                await stream.answer(reply, status)
                code = status.status_code
                if started is not None:
                    seconds = time.perf_counter() - started
            except H2StreamClosedError:
                pass  # the client reset the stream as the answer went out
            except Exception:
                log.exception("internal error answering %s", route)
                code = StatusCode.INTERNAL
                if stream.state in _NOT_ANSWERED:
                    with contextlib.suppress(H2ProtocolError):
                        await stream.close(_INTERNAL)
        if self._observe is not None:
            self._observe(route, code.name, seconds)

    @staticmethod
    async def _run(
        stream: _StrictStream, request: Any, method: tuple[str, Any, Any] | None
    ) -> tuple[float | None, Any, Status]:
        """When the request message was read (None: never), the reply (or None), the status."""
        if method is None:
            status = Status(
                StatusCode.UNIMPLEMENTED,
                f"no method /{request.service_name}/{request.method_name} here",
            )
            return None, None, status
        _, function, message_type = method
        try:
            message = await _unary_message(stream, message_type)
        except RpcFailedError as error:
            return None, None, error.status
        started = time.perf_counter()
        try:
            return started, await function(message, request), _OK
        except RpcFailedError as error:
            return started, None, error.status


_NOT_ANSWERED = frozenset({GRPCStreamState.OPEN, GRPCStreamState.HALF_CLOSED_REMOTE})


_PEER_GONE = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    anyio.IncompleteRead,
    ssl.SSLError,
    OSError,
)


def _peer_went_away(error: BaseException) -> bool:
    """True for the errors of a client that disconnected, alone or in a group."""
    if isinstance(error, BaseExceptionGroup):
        return all(_peer_went_away(inner) for inner in error.exceptions)
    return isinstance(error, _PEER_GONE)


class GrpcListener:
    """Serves purerpc services on Helios's own listener (see the module docstring).

    ``observe``, if given, is called once for each call answered (see
    :data:`CallObserver`). :meth:`drain` and :meth:`wait_closed` are for
    shutdown.
    """

    def __init__(
        self,
        services: dict[str, Service],
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        observe: CallObserver | None = None,
    ) -> None:
        self.connections = 0
        self._services = services
        self._max_message_bytes = max_message_bytes
        self._observe = observe
        self._accepting: trio.CancelScope | None = None
        self._listening: set[trio.CancelScope] = set()
        self._draining = False
        # Set once draining and the last connection has closed.
        self._closed = trio.Event()

    def connection_opened(self, listening: trio.CancelScope) -> None:
        self.connections += 1
        self._listening.add(listening)
        if self._draining:
            listening.cancel()

    def connection_closed(self, listening: trio.CancelScope) -> None:
        self.connections -= 1
        self._listening.discard(listening)
        if self._draining and not self.connections:
            self._closed.set()

    async def serve(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host``:``port`` until cancelled; report the bound address.

        Connections are served in a task group of their own, so that
        :meth:`drain` can stop accepting while calls in flight finish.
        """
        listener: anyio.abc.Listener[Any] = await anyio.create_tcp_listener(
            local_host=host, local_port=port
        )
        address = listener.extra(anyio.abc.SocketAttribute.local_address)  # noqa: S610
        if ssl_context is not None:
            listener = TLSListener(listener, ssl_context, standard_compatible=False)
        handler = _Handler(
            self._services,
            self,
            max_message_bytes=self._max_message_bytes,
            observe=self._observe,
        )
        async with anyio.create_task_group() as connections:
            async with listener:
                with trio.CancelScope() as self._accepting:
                    task_status.started((str(address[0]), int(address[1])))
                    await listener.serve(handler, task_group=connections)
            # Draining: the listener is closed; open connections finish their
            # calls, then are cancelled with the process.
            await trio.sleep_forever()

    def drain(self) -> None:
        """Stop accepting connections and calls; calls in flight go on."""
        self._draining = True
        if self._accepting is not None:
            self._accepting.cancel()
        for listening in list(self._listening):
            listening.cancel()
        if not self.connections:
            self._closed.set()

    async def wait_closed(self) -> None:
        """Wait, after :meth:`drain`, until every connection has answered and closed."""
        await self._closed.wait()


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
