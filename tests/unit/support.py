"""Helpers shared by the unit tests.

A gateway built from policy documents, and a tiny HTTP/1.1 client that talks
to :class:`helios.server.http.HTTPServer` over trio's in-memory streams, so a
test drives the real data plane byte for byte under a virtual clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import trio
import trio.testing
from hypothesis import settings

from helios.backends.memory import BucketTable
from helios.core.policy import PolicySet, parse_policy
from helios.gateway.auth import KeyRing
from helios.gateway.http_api import HttpApi, error_body
from helios.gateway.metrics import GatewayMetrics
from helios.gateway.service import Clock, Gateway
from helios.server.http import HTTPServer, Limits

API_KEY = "test-key"

# 2027-01-15T08:00:00Z: a multiple of every fixed window the tests use (1 s,
# 10 s, 1 min, 1 h), so trio's virtual time 0 is the start of a window.
EPOCH_S = 1_800_000_000
EPOCH_NS = EPOCH_S * 1_000_000_000
NS = 1_000_000_000

# Hypothesis: modest, derandomized, no example database, no deadline, so the
# suite is fast and gives the same result on every run.
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None)


def policy_set(*documents: Mapping[str, Any]) -> PolicySet:
    return PolicySet(parse_policy(document) for document in documents)


def make_gateway(
    *documents: Mapping[str, Any], max_buckets: int = 10_000, epoch_ns: int = EPOCH_NS
) -> Gateway:
    return Gateway(
        policy_set(*documents),
        BucketTable(max_buckets),
        KeyRing([API_KEY]),
        Clock(epoch_offset_ns=epoch_ns),
    )


def make_server(gateway: Gateway, limits: Limits | None = None) -> HTTPServer:
    api = HttpApi(gateway, GatewayMetrics(), max_batch_checks=1000)
    return HTTPServer(api, limits=limits or Limits(), error_body=error_body)


def allow_target(path: str = "/allow", **params: str | int) -> str:
    """A request target with each parameter percent-encoded (``safe=""``)."""
    if not params:
        return path
    query = "&".join(f"{name}={quote(str(value), safe='')}" for name, value in params.items())
    return f"{path}?{query}"


def request_bytes(
    method: str,
    target: str,
    *,
    body: bytes | None = None,
    headers: Iterable[tuple[str, str]] = (),
    api_key: str | None = API_KEY,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "host: helios.test"]
    if api_key is not None:
        lines.append(f"x-api-key: {api_key}")
    lines.extend(f"{name}: {value}" for name, value in headers)
    if body is not None:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def json_request_bytes(target: str, document: object, **kwargs: Any) -> bytes:
    body = json.dumps(document, ensure_ascii=False).encode()
    headers = [("content-type", "application/json")]
    return request_bytes("POST", target, body=body, headers=headers, **kwargs)


@dataclass
class HttpResponse:
    status: int
    # Lower-case header names; a repeated header keeps its last value.
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class HttpConnection:
    """The client side of one in-memory connection."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        chunk = await self.stream.receive_some(65536)
        self._buffer += chunk
        return bool(chunk)

    async def read_response(self, *, head: bool = False) -> HttpResponse:
        while b"\r\n\r\n" not in self._buffer:
            if not await self._fill():
                raise AssertionError(f"connection closed mid-response: {self._buffer!r}")
        head_bytes, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
        version, status, _reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head else int(headers["content-length"])
        while len(self._buffer) < length:
            if not await self._fill():
                raise AssertionError("connection closed mid-body")
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return HttpResponse(int(status), headers, body)

    async def request(self, method: str, target: str, **kwargs: Any) -> HttpResponse:
        await self.send(request_bytes(method, target, **kwargs))
        return await self.read_response(head=method == "HEAD")

    async def get(self, target: str, **kwargs: Any) -> HttpResponse:
        return await self.request("GET", target, **kwargs)

    async def post_json(self, target: str, document: object, **kwargs: Any) -> HttpResponse:
        await self.send(json_request_bytes(target, document, **kwargs))
        return await self.read_response()

    async def closed_by_server(self) -> bool:
        """True when the server closed the connection and sent nothing more."""
        if self._buffer:
            return False
        return not await self._fill()


def open_connection(nursery: trio.Nursery, server: HTTPServer) -> HttpConnection:
    """A new client connection, served by ``server`` in ``nursery``."""
    client, server_side = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, server_side)
    return HttpConnection(client)
