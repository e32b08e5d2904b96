"""Helios's gRPC transport: purerpc services on a listener of Helios's own.

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
  headers that are not a gRPC request reset their stream, and so does a
  request that HTTP/2 finds malformed (white space around a metadata value,
  an upper-case name, bad trailers, ...), which h2 makes a connection error
  and RFC 9113 a stream error;
- a call whose client resets its stream (a passed deadline, a cancelled
  call) is cancelled and logged nowhere: the client gave up, the server did
  nothing wrong;
- each call answered is reported to an observer (the gateway's metrics);
- on shutdown each connection stops taking calls, finishes and flushes those
  in flight, then closes.

The gateway's and the control plane's gRPC services both run on it.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import trio
from anyio.streams.tls import TLSListener
from google.protobuf.message import DecodeError
from h2.config import H2Configuration  # type: ignore[import-untyped]
from h2.connection import (  # type: ignore[import-untyped]
    AllowedStreamIDs,
    ConnectionInputs,
    H2Connection,
    _decode_headers,
)
from h2.errors import ErrorCodes  # type: ignore[import-untyped]
from h2.events import StreamReset  # type: ignore[import-untyped]
from h2.exceptions import (  # type: ignore[import-untyped]
    InvalidBodyLengthError,
    StreamClosedError,
    TooManyStreamsError,
)
from h2.exceptions import (
    ProtocolError as H2ProtocolError,
)
from h2.stream import StreamClosedBy, StreamState  # type: ignore[import-untyped]
from hyperframe.frame import RstStreamFrame, WindowUpdateFrame  # type: ignore[import-untyped]
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

if TYPE_CHECKING:
    pass

log = logging.getLogger("helios.grpc")


# gRPC's usual bound on a request message (as grpc-core and grpc-go apply it).
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

# The encodings a request message may be compressed with, and the zlib window
# bits that read each: gRPC's "deflate" is the zlib format (RFC 1950), "gzip"
# has a gzip header and trailer (RFC 1952).
_INFLATE_WBITS = {"deflate": zlib.MAX_WBITS, "gzip": 16 + zlib.MAX_WBITS}
ACCEPT_ENCODINGS = ("identity", "deflate", "gzip")

# How many request messages of the largest size may be under way on one
# connection at once, not yet complete: what a connection may hold is bounded
# by this many times grpc.max_message_bytes.
UNFINISHED_MESSAGES_PER_CONNECTION = 4

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

    @property
    def buffered(self) -> int:
        """Bytes held of a message that has not all arrived."""
        return len(self._buffer)

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


class _H2Connection(H2Connection):  # type: ignore[misc]
    """h2's server connection, where a malformed request resets its own stream only.

    h2 makes any fault it finds in a request's headers a connection error:
    it sends GOAWAY and every call on the connection fails. RFC 9113
    (section 8.1.1) makes a malformed request a stream error of type
    PROTOCOL_ERROR instead, and so it is here, for the faults h2 checks:
    fields that break the field rules (upper case in a name, white space
    around a value, a connection-specific field, ``te`` other than
    ``trailers``), missing, repeated or unknown pseudo-headers, a bad
    ``content-length`` or a body that does not match it, headers that are
    not UTF-8, trailers that break the same rules or do not end the stream.

    The stream is reset, a :class:`StreamReset` event (not remote) ends its
    call if it has one, and h2 answers whatever the client still sends on
    it with RST_STREAM, as for any stream it reset.
    """

    def _receive_headers_frame(self, frame: Any) -> tuple[list[Any], list[Any]]:
        # h2's, up to the stream's part.
        if frame.stream_id not in self.streams:
            limit = self.local_settings.max_concurrent_streams
            if self.open_inbound_streams + 1 > limit:
                raise TooManyStreamsError(f"Max inbound streams is {limit}")

        # Decoded whatever follows: the HPACK decoder's table is the
        # connection's, and each header block may change it.
        headers = _decode_headers(self.decoder, frame.data)
        events = self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        stream = self._get_or_create_stream(frame.stream_id, AllowedStreamIDs.ODD)
        try:
            frames, stream_events = stream.receive_headers(
                headers, "END_STREAM" in frame.flags, self.config.header_encoding
            )
        except StreamClosedError:
            raise  # headers on a stream already closed: h2's own handling
        except (H2ProtocolError, UnicodeDecodeError):
            # Not the error's text: it may quote a header's value, the key's.
            log.debug("reset a gRPC stream whose request HTTP/2 finds malformed")
            reset_frames, reset_events = self._reset_malformed(stream)
            return reset_frames, events + reset_events
        if "PRIORITY" in frame.flags:
            priority_frames, priority_events = self._receive_priority_frame(frame)
            stream_events[0].priority_updated = priority_events[0]
            stream_events.extend(priority_events)
            frames.extend(priority_frames)
        return frames, events + stream_events

    def _receive_data_frame(self, frame: Any) -> tuple[list[Any], list[Any]]:
        try:
            return super()._receive_data_frame(frame)  # type: ignore[no-any-return]
        except InvalidBodyLengthError:
            log.debug("reset a gRPC stream whose body does not match its content-length")
        frames, events = self._reset_malformed(self.streams[frame.stream_id])
        # The frame's bytes count against the connection's window, and no
        # one will acknowledge them.
        increment = self._inbound_flow_control_window_manager.process_bytes(
            frame.flow_controlled_length
        )
        if increment:
            update = WindowUpdateFrame(0)
            update.window_increment = increment
            frames.append(update)
        return frames, events

    def _reset_malformed(self, stream: Any) -> tuple[list[Any], list[Any]]:
        """Close ``stream`` as reset by this side: its RST_STREAM frame, its StreamReset event."""
        # Set directly, not through the state machine: h2 may have closed the
        # stream already (an input its machine has no move for).
        stream.state_machine.state = StreamState.CLOSED
        stream.state_machine.stream_closed_by = StreamClosedBy.SEND_RST_STREAM
        reset = RstStreamFrame(stream.stream_id)
        reset.error_code = ErrorCodes.PROTOCOL_ERROR
        event = StreamReset()
        event.stream_id = stream.stream_id
        event.error_code = ErrorCodes.PROTOCOL_ERROR
        event.remote_reset = False
        return [reset], [event]


class _Connection(GRPCConnection):  # type: ignore[misc]
    """purerpc's HTTP/2 connection, where a faulty request stays on its own stream.

    purerpc raises out of the connection for a request whose headers do not
    parse, a message over its bound, or one that does not inflate, which
    closes the connection and every call on it. Here a request whose headers
    do not parse is reset (and one HTTP/2 finds malformed, by
    :class:`_H2Connection`); a message that cannot be read is refused on its
    stream (:class:`_Refused`), and the stream's later data is dropped. A
    stream reset, by the client or as malformed, becomes a :class:`_Reset`
    event.
    """

    def __init__(self, config: GRPCConfiguration, max_message_bytes: int) -> None:
        super().__init__(config)
        # Bytes held across the connection's streams, of messages not all
        # arrived yet, and the most it may hold: each stream's message is
        # bounded, but a client could open many streams and leave each one's
        # message unfinished.
        self.buffered_bytes = 0
        self.max_buffered_bytes = UNFINISHED_MESSAGES_PER_CONNECTION * (max_message_bytes + 5)
        # h2's connection as purerpc sets it up, of Helios's class.
        self.h2_connection = _H2Connection(
            H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.h2_connection.clear_outbound_data_buffer()
        self._set_h2_connection_local_settings()
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
        before = reader.buffered
        try:
            messages = reader.feed(event.data, event.flow_controlled_length)
        except RpcFailedError as error:
            self.buffered_bytes -= before
            self.h2_connection.acknowledge_received_data(reader.refuse(), stream_id)
            return [_Refused(stream_id, error.status)]
        self.buffered_bytes += reader.buffered - before
        if self.buffered_bytes > self.max_buffered_bytes:
            self.buffered_bytes -= reader.buffered
            self.h2_connection.acknowledge_received_data(reader.refuse(), stream_id)
            status = Status(
                StatusCode.RESOURCE_EXHAUSTED,
                f"the connection holds more than {self.max_buffered_bytes} bytes of request"
                " messages not yet complete; send fewer large messages at once",
            )
            return [_Refused(stream_id, status)]
        if not messages:
            return []
        # The stream hands the flow-controlled bytes back as it reads its
        # messages, all with the first.
        events = [MessageReceived(stream_id, message, 0) for message in messages]
        events[0].flow_controlled_length = reader.unacknowledged
        reader.unacknowledged = 0
        return events

    def _stream_reset(self, event: Any) -> list[Any]:
        self.forget_reader(event.stream_id)
        return [_Reset(event.stream_id)]

    def _stream_ended(self, event: Any) -> list[Any]:
        reader = self.message_read_buffers.get(event.stream_id)
        if reader is not None and reader.buffered:
            # The client ended the stream in the middle of a message.
            self.buffered_bytes -= reader.buffered
            self.h2_connection.acknowledge_received_data(reader.refuse(), event.stream_id)
        return super()._stream_ended(event)  # type: ignore[no-any-return]

    def forget_reader(self, stream_id: int) -> None:
        """Drop a stream's reader: what it holds no longer counts, and is acknowledged."""
        reader = self.message_read_buffers.pop(stream_id, None)
        if reader is None:
            return
        self.buffered_bytes -= reader.buffered
        if reader.unacknowledged:
            # The start of a message that will never be read: its bytes
            # still count against the connection's window.
            self.h2_connection.acknowledge_received_data(reader.refuse(), stream_id)

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
            self._grpc_connection.forget_reader(self._stream_id)
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
            except H2ProtocolError as error:
                # The client broke HTTP/2 itself (a malformed request only
                # resets its stream, see _H2Connection): h2 may have queued a
                # GOAWAY, sent as the connection closes; calls in flight
                # cannot be answered.
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
            except StreamClosedError:
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
