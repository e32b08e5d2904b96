"""A lean HTTP/1.1 server on trio and httptools.

The gateway's data plane answers tens of thousands of small requests a second
on one core; general ASGI servers spend most of that budget on their own
machinery. This server does only what the data plane needs:

- keep-alive, and pipelined requests answered in order;
- limits on the request line, the headers and the body (413, 431, 400);
- a deadline for receiving a whole request once it has begun, and an idle
  timeout between requests, so a slow client cannot hold a connection;
- malformed input gets a 400 and the connection is closed;
- graceful draining: stop accepting, let requests in flight finish.

Error handling: a failure inside one connection (a bad request, a reset, a
bug in a handler) closes that connection only and is logged; the listener and
every other connection keep going.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate

import httptools
import trio

log = logging.getLogger("helios.http")

_REASONS = {
    200: b"OK",
    204: b"No Content",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    417: b"Expectation Failed",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}

_RECEIVE_BYTES = 65536

# Errors from accept() that mean "out of resources right now": wait and retry
# instead of dying (the same set trio's serve_listeners tolerates).
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one client may send and how slowly."""

    max_request_line_bytes: int = 8192
    max_header_bytes: int = 16384
    max_headers: int = 100
    max_body_bytes: int = 1_048_576
    # From a request's first byte until it is complete.
    request_timeout_seconds: float = 10.0
    # With no request under way, between requests on a keep-alive connection.
    idle_timeout_seconds: float = 60.0


class Request:
    """One parsed HTTP request."""

    __slots__ = (
        "_first",
        "_headers",
        "body",
        "keep_alive",
        "method",
        "path",
        "query",
        "repeated",
    )

    def __init__(self) -> None:
        self.method = ""
        self.path = ""
        self.query = ""
        # Header names are lower-cased; values are left as sent.
        self._headers: list[tuple[bytes, bytes]] = []
        # The first value of each header: several are looked up per request
        # (the server's own, the API key, the trace context), and a dict
        # lookup is much cheaper than a scan of the list each time.
        self._first: dict[bytes, bytes] = {}
        # The names of the headers sent more than once.
        self.repeated: set[bytes] = set()
        self.body = b""
        self.keep_alive = True

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The headers in the order sent (read only: set the whole list, or use add_header)."""
        return self._headers

    @headers.setter
    def headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self._headers = []
        self._first = {}
        self.repeated = set()
        for name, value in headers:
            self.add_header(name, value)

    def add_header(self, name: bytes, value: bytes) -> None:
        """Append a header (``name`` in lower case)."""
        self._headers.append((name, value))
        if name in self._first:
            self.repeated.add(name)
        else:
            self._first[name] = value

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (``name`` in lower case), or ``None``."""
        return self._first.get(name)

    def header_values(self, name: bytes) -> list[bytes]:
        """Every value of a header (``name`` in lower case), in the order sent."""
        return [value for header, value in self._headers if header == name]


class Response:
    """Status, extra header lines and body of one response."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        headers: bytes = b"",
        content_type: bytes = b"application/json",
    ) -> None:
        self.status = status
        self.body = body
        # Complete header lines, each ending in CRLF (e.g. b"Retry-After: 1\r\n").
        self.headers = headers
        self.content_type = content_type


Handler = Callable[[Request], Awaitable[Response]]
ErrorBody = Callable[[int, str], bytes]


class _Date:
    """The Date header, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self, now: float) -> bytes:
        """The header line at ``now`` (trio time)."""
        second = math.floor(now)
        if second != self._second:
            self._second = second
            self._line = b"date: " + formatdate(usegmt=True).encode() + b"\r\n"
        return self._line


class _Reject(Exception):
    """The request cannot be served; answer ``status`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HTTPServer:
    """Serves one handler on one or more listeners; see the module docstring."""

    def __init__(
        self,
        handler: Handler,
        *,
        limits: Limits = Limits(),
        error_body: ErrorBody | None = None,
        server_name: str = "helios",
    ) -> None:
        self.handler = handler
        self.limits = limits
        self._error_body = error_body or _plain_error
        self._server_line = b"server: " + server_name.encode() + b"\r\n"
        self._date = _Date()
        self._draining = False
        self._live: set[_Connection] = set()
        # Set once draining and the last connection has closed.
        self._closed = trio.Event()
        self._accepting = trio.CancelScope()
        self.connections = 0
        self.requests = 0
        self.bad_requests = 0

    async def serve(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        setting: str = "",
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and serve until cancelled.

        Reports the open listeners through ``task_status`` (so a caller that
        asked for port 0 learns the real port). ``setting`` names the
        configuration behind the address, for the error when it cannot be used.
        """
        try:
            listeners = await trio.open_tcp_listeners(port, host=host, backlog=1024)
        except OSError as error:
            where = f" (set by {setting})" if setting else ""
            raise OSError(
                error.errno, f"cannot listen on {host}:{port}{where}: {error.strerror or error}"
            ) from None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._accept_loop, listeners, ssl_context, nursery)
            task_status.started(listeners)

    async def _accept_loop(
        self,
        listeners: list[trio.SocketListener],
        ssl_context: ssl.SSLContext | None,
        nursery: trio.Nursery,
    ) -> None:
        with self._accepting:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(self._accept, listener, ssl_context, nursery)
        for listener in listeners:
            await listener.aclose()

    async def _accept(
        self,
        listener: trio.SocketListener,
        ssl_context: ssl.SSLContext | None,
        nursery: trio.Nursery,
    ) -> None:
        async with listener:
            while True:
                try:
                    stream: trio.abc.Stream = await listener.accept()
                except OSError as error:
                    if error.errno in _ACCEPT_CAPACITY_ERRNOS:
                        log.error("accept failed (%s); pausing 100 ms", error)
                        await trio.sleep(0.1)
                        continue
                    raise
                if ssl_context is not None:
                    stream = trio.SSLStream(stream, ssl_context, server_side=True)
                nursery.start_soon(self.serve_stream, stream)

    async def wait_closed(self) -> None:
        """Wait, after :meth:`drain`, until every connection has closed."""
        await self._closed.wait()

    def drain(self) -> None:
        """Stop accepting and close idle connections; busy ones finish first."""
        self._draining = True
        self._accepting.cancel()
        if not self.connections:
            self._closed.set()
        for connection in list(self._live):
            if connection.idle:
                connection.scope.cancel()

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection until it closes (tests pass in-memory streams)."""
        self.connections += 1
        try:
            async with stream:
                await _Connection(self, stream).run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; nothing to tell it
        except Exception:
            log.exception("connection failed")
        finally:
            self.connections -= 1
            if self._draining and not self.connections:
                self._closed.set()

    def render(self, response: Response, close: bool, now: float, *, head: bool = False) -> bytes:
        """The bytes of one response at ``now`` (without its body when answering HEAD)."""
        body = response.body
        return b"".join(
            (
                b"HTTP/1.1 %d %s\r\n" % (response.status, _REASONS.get(response.status, b"")),
                self._server_line,
                self._date.line(now),
                b"content-type: %s\r\ncontent-length: %d\r\n" % (response.content_type, len(body)),
                response.headers,
                b"connection: close\r\n\r\n" if close else b"\r\n",
                b"" if head else body,
            )
        )

    def error_response(self, status: int, message: str) -> Response:
        return Response(status, self._error_body(status, message))


def _plain_error(status: int, message: str) -> bytes:
    import json

    return json.dumps({"error": message}).encode()


class _Connection:
    """The state of one client connection; httptools calls the ``on_*`` methods."""

    def __init__(self, server: HTTPServer, stream: trio.abc.Stream) -> None:
        self.server = server
        self.stream = stream
        self.limits = server.limits
        self.parser = httptools.HttpRequestParser(self)
        # A plain TCP connection is read and written through its file
        # descriptor directly (see _loop and _write): trio's socket calls
        # add a scheduling round and a failed system call to every request.
        # TLS goes through the stream.
        self.fd: int | None = None
        if isinstance(stream, trio.SocketStream) and os.name == "posix":
            self.fd = stream.socket.fileno()
        self.ready: list[Request] = []
        self.current: Request | None = None
        # The run's clock, read directly: trio.current_time() finds it anew
        # through two more calls, and the clock is read twice per request.
        self.clock = trio.lowlevel.current_clock()
        self.scope = trio.CancelScope()
        # True while waiting for the first byte of a request: safe to close.
        self.idle = True
        # True when requests were answered in this round (their deadline reset).
        self.answered = False
        # Bytes received since the last complete request head. httptools holds
        # an unfinished header line in memory without reporting it, so the
        # size limit is enforced on what arrives, not only on what it parses.
        self.idle_step = min(1.0, server.limits.idle_timeout_seconds / 10)
        # The client sent "Expect: 100-continue" and waits before its body.
        self.continue_wanted = False
        self.head_bytes = 0
        self.head_limit = server.limits.max_request_line_bytes + server.limits.max_header_bytes
        self.url = b""
        self.header_bytes = 0
        self.body_parts: list[bytes] = []
        self.body_bytes = 0
        self.reject: _Reject | None = None

    # httptools callbacks. They record problems instead of raising: an
    # exception raised inside a callback would surface as a generic parser
    # error and lose its status.

    def on_message_begin(self) -> None:
        self.current = Request()
        self.url = b""
        self.header_bytes = 0
        self.body_parts = []
        self.body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_request_line_bytes:
            self._fail(_Reject(414, "request line too long"))

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.current
        assert request is not None
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.limits.max_header_bytes:
            self._fail(_Reject(431, "request headers too large"))
        elif len(request._headers) >= self.limits.max_headers:
            self._fail(_Reject(431, "too many request headers"))
        else:
            # add_header, inlined: this runs for every header of every request.
            name = name.lower()
            request._headers.append((name, value))
            if name in request._first:
                request.repeated.add(name)
            else:
                request._first[name] = value

    def on_headers_complete(self) -> None:
        self.head_bytes = 0
        request = self.current
        assert request is not None
        request.method = self.parser.get_method().decode("ascii", "replace")
        if request.header(b"upgrade") is not None:
            # Refused before it is answered: the request must not be decided
            # and then followed by an error.
            self._fail(_Reject(400, "protocol upgrades are not supported"))
            return
        length = request.header(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limits.max_body_bytes:
            self._fail(_Reject(413, f"request body larger than {self.limits.max_body_bytes} bytes"))
            return
        version = self.parser.get_http_version()
        if version != "1.1" and version != "1.0":
            self._fail(_Reject(505, f"HTTP/{version} is not supported; send HTTP/1.1"))
            return
        expect = request.header(b"expect")
        if expect is not None:
            if expect.strip().lower() != b"100-continue":
                # RFC 9110, section 10.1.1: an expectation the server cannot meet.
                self._fail(_Reject(417, "the only expectation supported is Expect: 100-continue"))
                return
            self.continue_wanted = True

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.limits.max_body_bytes:
            self._fail(_Reject(413, f"request body larger than {self.limits.max_body_bytes} bytes"))
        else:
            self.body_parts.append(body)

    def on_message_complete(self) -> None:
        request = self.current
        assert request is not None
        self.current = None
        if self.reject is not None:
            return
        url = self.url
        if url[:1] == b"/" and b"#" not in url:
            # The usual origin form ("/path?query"), whose characters the
            # parser has already checked: splitting it is all that is left.
            path, _, query = url.partition(b"?")
        else:
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                self._fail(_Reject(400, "malformed request target"))
                return
            path, query = parsed.path or b"/", parsed.query or b""
        request.path = path.decode("utf-8", "surrogateescape")
        request.query = query.decode("utf-8", "surrogateescape")
        request.body = b"".join(self.body_parts)
        request.keep_alive = self.parser.should_keep_alive()
        self.ready.append(request)

    def _fail(self, reject: _Reject) -> None:
        if self.reject is None:
            self.reject = reject

    async def run(self) -> None:
        server = self.server
        server._live.add(self)
        try:
            with trio.CancelScope() as self.scope:
                await self._loop()
        finally:
            server._live.discard(self)
        if self.scope.cancelled_caught and self.current is not None:
            # Timed out in the middle of a request (draining only cancels
            # connections between requests).
            await self._send_error(408, "request not received in time")

    async def _loop(self) -> None:
        # One cancel scope serves the whole connection; moving its deadline is
        # much cheaper than a new scope per read. Its deadline is the idle
        # timeout between requests and the request timeout once a request has
        # begun.
        server = self.server
        limits = self.limits
        scope = self.scope
        fd = self.fd
        scope.deadline = self.clock.current_time() + limits.idle_timeout_seconds
        while True:
            began = self.current is None
            if began and server._draining:
                return
            self.idle = began
            if fd is None:
                data = await self.stream.receive_some(_RECEIVE_BYTES)
            else:
                # Wait, then read. A keep-alive client sends its next request
                # only after it has read the answer, so a read straight after
                # answering (as trio's recv tries first) would almost always
                # fail, a system call and an exception, before waiting anyway.
                # The wait is the connection's one scheduling point per
                # request: it lets other tasks run and raises Cancelled when
                # the deadline passes, as trio's recv would. Inline rather
                # than in a coroutine of its own: every wake-up of the task
                # passes through each coroutine it awaits.
                await trio.lowlevel.wait_readable(fd)
                try:
                    data = os.read(fd, _RECEIVE_BYTES)
                except BlockingIOError:
                    continue  # a spurious wake-up: wait again
                except OSError as error:
                    raise trio.BrokenResourceError from error
            self.idle = False
            if not data:
                return

            if self.current is None or not self.current.method:
                self.head_bytes += len(data)
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self._fail(_Reject(400, "protocol upgrades are not supported"))
            except httptools.HttpParserError as error:
                if self.reject is None:
                    self._fail(_Reject(400, f"malformed HTTP request: {error}"))

            if self.head_bytes > self.head_limit and self.reject is None:
                self._fail(_Reject(431, "request headers too large"))

            # While answering, the deadline in force stays: a client that stops
            # reading cannot hold the connection past it.
            if self.ready and not await self._answer_ready():
                return
            # After the answers to any earlier pipelined requests, in order.
            if self.continue_wanted:
                self.continue_wanted = False
                if self.current is not None and self.reject is None:
                    await self.stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            now = self.clock.current_time()
            if self.reject is not None:
                server.bad_requests += 1
                await self._send_error(self.reject.status, self.reject.message)
                return

            if self.current is None:
                # Only an answered request restarts the idle timeout: bytes
                # that begin no request (blank lines) must not keep a
                # connection open.
                # Moving a deadline costs a heap update in trio; on a busy
                # connection it moves only in steps of a tenth of the idle
                # timeout (at most a second), which is how much longer than
                # the idle timeout a connection may then stay open.
                idle_deadline = now + limits.idle_timeout_seconds
                if self.answered and scope.deadline < idle_deadline:
                    scope.deadline = idle_deadline + self.idle_step
            elif began or self.answered:
                # A request began in this chunk: it has the request timeout
                # from now, whatever remained of the idle timeout.
                scope.deadline = now + limits.request_timeout_seconds
            self.answered = False

    async def _answer_ready(self) -> bool:
        """Answer every complete request in order; False once the connection must close."""
        server = self.server
        ready, self.ready = self.ready, []
        self.answered = True
        out: list[bytes] = []
        keep_open = True
        now = self.clock.current_time()
        for request in ready:
            server.requests += 1
            try:
                response = await server.handler(request)
            except Exception:
                log.exception("handler failed for %s %s", request.method, request.path)
                response = server.error_response(500, "internal error")
                request.keep_alive = False
            close = not request.keep_alive or server._draining
            out.append(server.render(response, close, now, head=request.method == "HEAD"))
            if close:
                keep_open = False
                break
        # The stream's send_all, which waits until the socket is writable, is
        # only needed for what the socket did not take at once (and for TLS).
        rest = self._write(b"".join(out))
        if rest:
            await self.stream.send_all(rest)
        return keep_open

    def _write(self, data: bytes) -> bytes:
        """Write what the socket takes at once, without waiting; return the rest.

        A plain method, not a coroutine: one write usually takes a whole
        response, and it needs no checkpoint, since the next read waits (and
        so yields) anyway.
        """
        fd = self.fd
        if fd is None:
            return data
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            return data
        except OSError as error:
            raise trio.BrokenResourceError from error
        return data[sent:] if sent < len(data) else b""

    async def _send_error(self, status: int, message: str) -> None:
        response = self.server.error_response(status, message)
        try:
            # Bounded: a client that does not read must not hold the connection.
            with trio.move_on_after(self.limits.request_timeout_seconds):
                response_bytes = self.server.render(response, True, self.clock.current_time())
                await self.stream.send_all(response_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
