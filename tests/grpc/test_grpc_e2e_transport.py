"""The real ``helios`` process's gRPC transport under hostile and unusual requests.

Message bounds, compressed messages (deflate, gzip, a compression bomb, an
unknown encoding) and malformed calls are each answered on their own stream,
with the status the gRPC spec gives them, while the other calls on the same
HTTP/2 connection go on; nothing a client does is logged as a server failure.
grpcio drives what a real client sends; a bare HTTP/2 client (h2) sends what
grpcio cannot.
"""

from __future__ import annotations

import gzip
import socket
import struct
import urllib.parse
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import hyperframe.frame
import pytest
import trio
from grpc_e2e_support import (  # noqa: F401 - fixtures, found by name
    API_KEY,
    KEY,
    GrpcHelios,
    GrpcHeliosFactory,
    grpc_helios_fixture,
)

from helios.grpc.generated.helios.v1 import ratelimit_pb2 as pb

pytestmark = pytest.mark.slow

POLICIES = """\
[[policies]]
tenant = "acme"
resource = "*"
algorithm = "fixed_window"
limit = 1000000
window = "1h"
"""

MiB = 1024 * 1024
LIMIT = 4 * MiB
ALLOW = "/helios.v1.RateLimitService/Allow"


def _allow(tenant: str = "acme", resource: str = "r") -> pb.AllowRequest:
    return pb.AllowRequest(tenant=tenant, resource=resource)


def _batch(checks: int) -> pb.AllowBatchRequest:
    return pb.AllowBatchRequest(checks=[_allow(resource=f"r{i}") for i in range(checks)])


def _peak_rss_bytes(helios: GrpcHelios) -> int:
    """The process's peak resident memory (VmHWM)."""
    status = f"/proc/{helios.helios.process.pid}/status"
    with open(status, encoding="ascii") as lines:
        for line in lines:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in {status}")


def _failure(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details()
    raise AssertionError("the call succeeded")


@pytest.fixture
def helios(grpc_helios: GrpcHeliosFactory) -> GrpcHelios:
    return grpc_helios(POLICIES)


def _warnings(helios: GrpcHelios) -> list[str]:
    return [line for line in helios.helios.log().splitlines() if " WARNING " in line]


# grpcio


def _compressed_calls(target: str, stubs: dict[str, ModuleType]) -> dict[str, Any]:
    with grpc.insecure_channel(target) as channel:
        stub = stubs["helios"].RateLimitServiceStub(channel)
        seen: dict[str, Any] = {}
        for name, compression in (
            ("gzip", grpc.Compression.Gzip),
            ("deflate", grpc.Compression.Deflate),
        ):
            reply = stub.AllowBatch(_batch(400), metadata=KEY, compression=compression, timeout=10)
            seen[name] = reply
        seen["plain"] = stub.Allow(_allow(), metadata=KEY, timeout=10)
    return seen


async def test_gzip_and_deflate_requests_are_answered(
    helios: GrpcHelios, grpcio_stubs: Any
) -> None:
    # 400 checks: a request of about 4 KB (the audit's gzip case was 10 KB).
    assert len(_batch(400).SerializeToString()) > 4000
    seen = await trio.to_thread.run_sync(_compressed_calls, helios.target, grpcio_stubs)
    for name in ("gzip", "deflate"):
        results = seen[name].results
        assert len(results) == 400, name
        assert all(result.allowed for result in results), name
    assert [r.remaining for r in seen["deflate"].results[:2]] == [999998, 999998]
    assert seen["plain"].allowed and seen["plain"].remaining == 999999
    assert not _warnings(helios)


def _bomb(target: str, stubs: dict[str, ModuleType], helios: GrpcHelios) -> dict[str, Any]:
    # 40 MiB of one letter deflates to about 40 KB.
    bomb = _allow(tenant="a" * (40 * MiB))
    with grpc.insecure_channel(target) as channel:
        stub = stubs["helios"].RateLimitServiceStub(channel)
        # A first compressed call, so that the peak memory measured next
        # holds what serving such calls takes.
        stub.Allow(_allow(), metadata=KEY, compression=grpc.Compression.Deflate, timeout=10)
        before = _peak_rss_bytes(helios)
        seen = {
            "without key": _failure(
                lambda: stub.Allow(bomb, compression=grpc.Compression.Deflate, timeout=30)
            ),
            "gzip": _failure(
                lambda: stub.Allow(
                    bomb, metadata=KEY, compression=grpc.Compression.Gzip, timeout=30
                )
            ),
        }
        seen["growth"] = _peak_rss_bytes(helios) - before
        seen["after"] = stub.Allow(
            _allow(), metadata=KEY, compression=grpc.Compression.Deflate, timeout=10
        )
    return seen


async def test_a_compression_bomb_is_refused_without_being_inflated(
    helios: GrpcHelios, grpcio_stubs: Any
) -> None:
    seen = await trio.to_thread.run_sync(_bomb, helios.target, grpcio_stubs, helios)
    for name in ("without key", "gzip"):
        code, details = seen[name]
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, name
        assert details == f"the request message must be at most {LIMIT} bytes once inflated"
    # Inflating stops at the bound: the process never held the 40 MiB message.
    assert seen["growth"] < 16 * MiB, seen["growth"]
    assert seen["after"].allowed
    assert not _warnings(helios)


def _oversized(target: str, stubs: dict[str, ModuleType]) -> dict[str, Any]:
    big = _allow(tenant="a" * (40 * MiB))
    with grpc.insecure_channel(target) as channel:
        stub = stubs["helios"].RateLimitServiceStub(channel)
        grpc.channel_ready_future(channel).result(timeout=5)
        # Calls in flight on the same connection while the big one is refused.
        refused = [
            stub.Allow.future(big, timeout=30),
            stub.Allow.future(big, metadata=KEY, timeout=30),
        ]
        others = [stub.Allow.future(_allow(), metadata=KEY, timeout=30) for _ in range(20)]
        seen = {
            "refused": [_failure(future.result) for future in refused],
            "others": [future.result() for future in others],
            "after": stub.Allow(_allow(), metadata=KEY, timeout=10),
        }
    return seen


async def test_an_oversized_message_is_refused_on_its_own_stream(
    helios: GrpcHelios, grpcio_stubs: Any
) -> None:
    seen = await trio.to_thread.run_sync(_oversized, helios.target, grpcio_stubs)
    size = len(_allow(tenant="a" * (40 * MiB)).SerializeToString())
    for code, details in seen["refused"]:
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details == f"the request message must be at most {LIMIT} bytes, got {size}"
    assert all(decision.allowed for decision in seen["others"])
    assert seen["after"].allowed
    assert not _warnings(helios)


def _bounded(target: str, stubs: dict[str, ModuleType]) -> list[Any]:
    with grpc.insecure_channel(target) as channel:
        stub = stubs["helios"].RateLimitServiceStub(channel)
        return [
            stub.AllowBatch(_batch(10), metadata=KEY, timeout=10),
            _failure(lambda: stub.AllowBatch(_batch(100), metadata=KEY, timeout=10)),
            _failure(
                lambda: stub.AllowBatch(
                    _batch(100), metadata=KEY, compression=grpc.Compression.Gzip, timeout=10
                )
            ),
        ]


async def test_the_bound_is_a_setting(grpc_helios: GrpcHeliosFactory, grpcio_stubs: Any) -> None:
    helios = grpc_helios(POLICIES, settings={"HELIOS_GRPC_MAX_MESSAGE_BYTES": "1024"})
    assert len(_batch(10).SerializeToString()) < 1024 < len(_batch(100).SerializeToString())
    small, plain, compressed = await trio.to_thread.run_sync(_bounded, helios.target, grpcio_stubs)
    assert len(small.results) == 10
    size = len(_batch(100).SerializeToString())
    assert plain == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"the request message must be at most 1024 bytes, got {size}",
    )
    # Compressed, it is small enough to send, not once inflated.
    assert len(gzip.compress(_batch(100).SerializeToString())) < 1024
    assert compressed == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "the request message must be at most 1024 bytes once inflated",
    )


def _without_key(target: str, stubs: dict[str, ModuleType]) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(target) as channel:
        stub = stubs["helios"].RateLimitServiceStub(channel)
        return _failure(lambda: stub.Allow(_allow(), timeout=10))


# Metadata that HTTP/2 forbids: white space around a value (RFC 9113,
# section 8.2.1). grpcio sends it; h2 finds the request malformed.
MALFORMED_METADATA = {
    "space before the key": (("x-api-key", f" {API_KEY}"),),
    "space after the key": (("x-api-key", f"{API_KEY} "),),
    "space before a note": (*KEY, ("x-note", " hi")),
    "space after a note": (*KEY, ("x-note", "hi ")),
}


def _malformed_among_good(target: str, stubs: dict[str, ModuleType]) -> dict[str, Any]:
    with grpc.insecure_channel(target) as channel:
        stub = stubs["helios"].RateLimitServiceStub(channel)
        grpc.channel_ready_future(channel).result(timeout=5)
        # The malformed calls start while 200 good ones are in flight on the
        # same connection.
        good = [stub.Allow.future(_allow(), metadata=KEY, timeout=30) for _ in range(100)]
        malformed = {
            name: stub.Allow.future(_allow(), metadata=metadata, timeout=30)
            for name, metadata in MALFORMED_METADATA.items()
        }
        good += [stub.Allow.future(_allow(), metadata=KEY, timeout=30) for _ in range(100)]
        return {
            "good": [future.result() for future in good],
            "malformed": {name: _failure(future.result) for name, future in malformed.items()},
            "after": stub.Allow(_allow(), metadata=KEY, timeout=10),
        }


async def test_malformed_metadata_fails_its_own_call_only(
    helios: GrpcHelios, grpcio_stubs: Any
) -> None:
    seen = await trio.to_thread.run_sync(_malformed_among_good, helios.target, grpcio_stubs)
    # Every good call answered, each charged once; the malformed ones were
    # reset before anything was decided for them.
    remaining = sorted(decision.remaining for decision in seen["good"])
    assert remaining == list(range(1000000 - 200, 1000000))
    assert seen["after"].remaining == 1000000 - 201
    for name, (code, details) in seen["malformed"].items():
        # grpcio's reading of RST_STREAM with PROTOCOL_ERROR.
        assert code == grpc.StatusCode.INTERNAL, name
        assert "RST_STREAM" in details, (name, details)
    assert helios.metric("helios_requests_total", transport="grpc", code="OK") == 201
    assert helios.metric("helios_requests_total", transport="grpc", code="CANCELLED") == 0
    assert not _warnings(helios)


async def test_a_call_without_key_is_told_about_metadata(
    helios: GrpcHelios, grpcio_stubs: Any
) -> None:
    code, details = await trio.to_thread.run_sync(_without_key, helios.target, grpcio_stubs)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert details == "an API key is required (metadata x-api-key or authorization: Bearer)"


# A bare HTTP/2 client


@dataclass
class Answer:
    """What came back on one stream: headers and trailers, the data, or a reset."""

    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    reset: int | None = None

    @property
    def status(self) -> int:
        return int(self.headers["grpc-status"])

    @property
    def message(self) -> str:
        return urllib.parse.unquote(self.headers.get("grpc-message", ""))


def frame(payload: bytes, *, compressed: bool = False) -> bytes:
    """One length-prefixed gRPC message."""
    return struct.pack(">?I", compressed, len(payload)) + payload


Header = tuple[str, str] | tuple[bytes, bytes]


class RawClient:
    """One HTTP/2 connection, one call at a time; the connection must stay open throughout.

    It sends headers as given, without h2's checks: upper-case names,
    connection-specific fields and the like go out as they are.
    """

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.socket = socket.create_connection((host, int(port)), timeout=10)
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding="utf-8",
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.h2.initiate_connection()
        self.socket.sendall(self.h2.data_to_send())

    def call(
        self,
        body: bytes | None,
        *,
        path: str = ALLOW,
        pseudo: tuple[Header, ...] = (),
        headers: tuple[Header, ...] = (),
        end: bool = True,
        trailers: tuple[Header, ...] = (),
        trailers_end: bool = True,
    ) -> Answer:
        """Send a request (headers alone when ``body`` is None) and read its answer.

        ``pseudo`` follows the request's pseudo-headers, ``headers`` its
        other fields. With ``end=False`` the request stays open: the answer
        ends with the server's reset of the stream. With
        ``trailers_end=False`` the trailers do not end the stream.
        """
        stream_id = self.h2.get_next_available_stream_id()
        request = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "helios"),
            *pseudo,
            ("te", "trailers"),
            ("content-type", "application/grpc"),
            ("x-api-key", KEY[0][1]),
            *headers,
        ]
        self.h2.send_headers(stream_id, request, end_stream=body is None)
        if body is not None:
            self.h2.send_data(stream_id, body, end_stream=end and not trailers)
        if trailers and trailers_end:
            self.h2.send_headers(stream_id, trailers, end_stream=True)
        data = self.h2.data_to_send()
        if trailers and not trailers_end:
            # h2 refuses to send such trailers: the frame is built here, with
            # h2's encoder so that its header table stays the server's.
            headers_frame = hyperframe.frame.HeadersFrame(stream_id)
            headers_frame.data = self.h2.encoder.encode(trailers)
            headers_frame.flags.add("END_HEADERS")
            data += headers_frame.serialize()
        self.socket.sendall(data)
        return self._answer(stream_id, until_reset=not end)

    def start_unfinished(self, announced: int, sent: int) -> int:
        """Open a call whose message announces ``announced`` bytes and send ``sent`` of them.

        The stream stays open, its message unfinished; returns its id.
        """
        stream_id = self.h2.get_next_available_stream_id()
        request = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", ALLOW),
            (":authority", "helios"),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
            ("x-api-key", KEY[0][1]),
        ]
        self.h2.send_headers(stream_id, request)
        data = struct.pack(">?I", False, announced) + b"\0" * sent
        step = self.h2.max_outbound_frame_size
        for start in range(0, len(data), step):
            self.h2.send_data(stream_id, data[start : start + step])
        self.socket.sendall(self.h2.data_to_send())
        return stream_id

    def answer_of(self, stream_id: int) -> Answer:
        """The answer on a stream the server ends with a reset."""
        return self._answer(stream_id, until_reset=True)

    def _answer(self, stream_id: int, *, until_reset: bool) -> Answer:
        answer = Answer()
        while True:
            chunk = self.socket.recv(65536)
            assert chunk, "the server closed the connection"
            done = False
            for event in self.h2.receive_data(chunk):
                if getattr(event, "stream_id", None) != stream_id:
                    continue
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    answer.headers.update(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    answer.data += event.data
                    self.h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    answer.reset = event.error_code
                    done = True
                elif isinstance(event, h2.events.StreamEnded):
                    done = not until_reset
            self.socket.sendall(self.h2.data_to_send())
            if done:
                return answer

    def close(self) -> None:
        self.h2.close_connection()
        self.socket.sendall(self.h2.data_to_send())
        self.socket.close()


@pytest.fixture
def raw(helios: GrpcHelios) -> Iterator[RawClient]:
    client = RawClient(helios.target)
    yield client
    client.close()


def _decision(answer: Answer) -> pb.Decision:
    assert answer.status == 0, answer
    assert answer.data[:1] == b"\0"
    return pb.Decision.FromString(answer.data[5:])


def _raw_session(raw: RawClient) -> dict[str, Answer]:
    message = _allow().SerializeToString()
    seen = {
        "deflate": raw.call(
            frame(zlib.compress(message), compressed=True), headers=(("grpc-encoding", "deflate"),)
        ),
        "gzip": raw.call(
            frame(gzip.compress(message), compressed=True), headers=(("grpc-encoding", "gzip"),)
        ),
        # gzip read as zlib, the format purerpc assumed for both.
        "gzip as deflate": raw.call(
            frame(gzip.compress(message), compressed=True), headers=(("grpc-encoding", "deflate"),)
        ),
        "snappy": raw.call(
            frame(b"\0" * 8, compressed=True), headers=(("grpc-encoding", "snappy"),)
        ),
        "no encoding": raw.call(frame(zlib.compress(message), compressed=True)),
        "truncated": raw.call(
            frame(zlib.compress(message)[:-4], compressed=True),
            headers=(("grpc-encoding", "deflate"),),
        ),
        # A prefix announcing 2 GiB, and the stream left open: answered at once.
        "announced": raw.call(struct.pack(">?I", False, 2**31), end=False),
        "no message": raw.call(None),
        "two messages": raw.call(frame(message) * 2),
        "not a message": raw.call(frame(b"\xff\xff\xff")),
        "unknown method": raw.call(frame(message), path="/helios.v1.RateLimitService/Nope"),
        "bad timeout": raw.call(frame(message), headers=(("grpc-timeout", "soon"),)),
        "negative timeout": raw.call(frame(message), headers=(("grpc-timeout", "-1S"),)),
        # A request has no trailers: these are ignored.
        "trailers": raw.call(frame(message), trailers=(("x-trailer", "1"),)),
        "plain": raw.call(frame(message)),
    }
    return seen


async def test_faulty_calls_are_answered_on_their_own_stream(
    helios: GrpcHelios, raw: RawClient
) -> None:
    seen = await trio.to_thread.run_sync(_raw_session, raw)

    assert _decision(seen["deflate"]).remaining == 999999
    assert _decision(seen["gzip"]).remaining == 999998
    assert _decision(seen["trailers"]).remaining == 999997
    assert _decision(seen["plain"]).remaining == 999996
    # The response headers say which encodings a request may use.
    assert seen["plain"].headers["grpc-accept-encoding"] == "identity,deflate,gzip"

    def status(name: str) -> tuple[int, str]:
        return seen[name].status, seen[name].message

    assert status("gzip as deflate") == (13, "the request message does not inflate as deflate")
    assert status("snappy")[0] == 12  # UNIMPLEMENTED
    assert seen["snappy"].headers["grpc-accept-encoding"] == "identity,deflate,gzip"
    assert status("no encoding")[0] == 13  # INTERNAL, as the spec says
    assert status("truncated")[0] == 13
    assert status("announced") == (
        8,  # RESOURCE_EXHAUSTED
        f"the request message must be at most {LIMIT} bytes, got {2**31}",
    )
    # Answered before the client finished sending: the stream is then reset
    # with NO_ERROR, asking the client to stop.
    assert seen["announced"].reset == 0
    assert status("no message")[0] == 3  # INVALID_ARGUMENT
    assert status("two messages")[0] == 3
    assert status("not a message")[0] == 3
    assert status("unknown method")[0] == 12
    # Not a gRPC request: its stream is reset.
    assert seen["bad timeout"].reset == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert seen["negative timeout"].reset == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert not _warnings(helios)


def _malformed_session(raw: RawClient) -> dict[str, Answer]:
    message = _allow().SerializeToString()
    body = frame(message)
    seen = {
        "upper-case name": raw.call(body, headers=(("X-Note", "1"),)),
        "connection-specific": raw.call(body, headers=(("connection", "keep-alive"),)),
        "te other than trailers": raw.call(body, headers=(("te", "gzip"),)),
        "space around a value": raw.call(body, headers=(("x-note", " hi "),)),
        "not UTF-8": raw.call(body, headers=((b"x-note", b"\xff"),)),
        "unknown pseudo-header": raw.call(body, pseudo=((":note", "1"),)),
        "repeated pseudo-header": raw.call(body, pseudo=((":path", ALLOW),)),
        "pseudo-header last": raw.call(body, headers=((":note", "1"),)),
        "bad content-length": raw.call(body, headers=(("content-length", "ten"),)),
        "content-length not the body's": raw.call(body, headers=(("content-length", "3"),)),
        # A request has no trailers; those it has must still be well formed.
        "upper-case trailer": raw.call(body, trailers=(("X-Trailer", "1"),)),
        "pseudo-header trailer": raw.call(body, trailers=((":path", ALLOW),)),
        "trailers not at the end": raw.call(
            body, trailers=(("x-trailer", "1"),), trailers_end=False
        ),
        "plain": raw.call(body),
    }
    return seen


async def test_a_malformed_request_resets_its_own_stream(
    helios: GrpcHelios, raw: RawClient
) -> None:
    seen = await trio.to_thread.run_sync(_malformed_session, raw)
    plain = seen.pop("plain")
    for name, answer in seen.items():
        assert answer.reset == h2.errors.ErrorCodes.PROTOCOL_ERROR, (name, answer)
        assert not answer.headers, name
    # The connection served each request after the one before was reset
    # (and kept its header table: each block was read, malformed or not);
    # nothing was charged before the plain call.
    assert _decision(plain).remaining == 999999
    assert not _warnings(helios)


def _unfinished_session(raw: RawClient, limit: int) -> tuple[Answer, Answer]:
    # The first call reads the server's settings (its windows and frame size).
    raw.call(frame(_allow().SerializeToString()))
    # Four unfinished messages of nearly the bound fit; a fifth is too many.
    for _ in range(4):
        raw.start_unfinished(limit, limit - 100)
    refused = raw.answer_of(raw.start_unfinished(limit, limit - 100))
    return refused, raw.call(frame(_allow().SerializeToString()))


async def test_a_connection_holds_a_bounded_amount_of_unfinished_messages(
    grpc_helios: GrpcHeliosFactory,
) -> None:
    limit = 64 * 1024
    helios = grpc_helios(POLICIES, settings={"HELIOS_GRPC_MAX_MESSAGE_BYTES": str(limit)})
    client = RawClient(helios.target)
    try:
        refused, plain = await trio.to_thread.run_sync(_unfinished_session, client, limit)
    finally:
        client.close()
    assert refused.status == 8  # RESOURCE_EXHAUSTED
    assert "request messages not yet complete" in refused.message
    # The connection and its other calls carry on.
    assert _decision(plain).remaining == 999998
    assert not _warnings(helios)
