"""The key-value store in etcd, through etcd's v3 JSON gateway over HTTP.

etcd serves its gRPC API as JSON too (``POST /v3/kv/range`` and so on): keys
and values are base64, 64-bit integers are strings, and the streaming calls
(``/v3/watch``, ``/v3/lease/keepalive``) answer with one JSON object per line.
Speaking that with httpx keeps etcd's client free of protobuf stubs (see
``PRODUCT.md``) and of threads: httpx runs on trio and cancels cleanly.

Every call is bounded by ``timeout_ms`` and every failure surfaces as
:class:`~helios.store.kv.StoreUnavailable`. With several endpoints, a call that
cannot connect to one tries the next; the one that answered is tried first
next time. Only failures to connect move on: a request that reached etcd is
never sent twice, since a transaction may have applied.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import trio

from helios.errors import ConfigError, HeliosError
from helios.store.kv import (
    Compacted,
    Compare,
    Delete,
    Entry,
    Event,
    Operation,
    Put,
    StoreUnavailable,
    WatchHandler,
)

if TYPE_CHECKING:
    from helios.tracing import Tracing

# gRPC status codes etcd puts in its JSON errors.
_NOT_FOUND = 5
_UNAUTHENTICATED = 16

# How long closing a stream may take once the watch is over.
_CLOSE_TIMEOUT_S = 1.0


class EtcdError(StoreUnavailable):
    """etcd answered a call with an error (``code`` is its gRPC status code)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"etcd refused the request: {message}")
        self.code = code
        self.etcd_message = message


class EtcdStore:
    """A key-value store in an etcd v3 cluster (see the module docstring).

    ``endpoints`` are ``http://`` or ``https://`` URLs of cluster members;
    ``username`` and ``password`` are needed when etcd's authentication is on.
    Nothing connects until the first call; :meth:`ping` checks that etcd answers.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        username: str = "",
        password: str = "",
        timeout_ms: int = 2000,
        tls: ssl.SSLContext | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        if not endpoints:
            raise ConfigError("etcd needs at least one endpoint", field="store.etcd_endpoints")
        for endpoint in endpoints:
            if urlsplit(endpoint).scheme not in ("http", "https"):
                raise ConfigError(
                    f"etcd endpoints must be http:// or https:// URLs, got {endpoint!r}",
                    field="store.etcd_endpoints",
                )
        self._endpoints = [endpoint.rstrip("/") for endpoint in endpoints]
        self.description = "etcd " + ",".join(_shown(e) for e in self._endpoints)
        self._username = username
        self._password = password
        self._timeout_ms = timeout_ms
        self._timeout_s = timeout_ms / 1000
        # A span per call (not for a watch, which lasts as long as the process).
        self._tracing = tracing
        # The endpoint that answered last; calls start there.
        self._current = 0
        self._token: str | None = None
        # Each endpoint gets its share of the call's time to accept a connection,
        # so that a silent first one leaves time to try the others.
        self._connect_timeout_s = self._timeout_s / len(self._endpoints)
        # Environment proxies are for the outside world; etcd is a neighbour.
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout_s, connect=self._connect_timeout_s),
            trust_env=False,
            # ``tls``: a CA of etcd's own and a client certificate, when given.
            verify=tls if tls is not None else True,
        )

    # Reading.

    async def get(self, key: str) -> Entry | None:
        answer = await self._call("kv/range", {"key": _b64(key.encode())})
        kvs = answer.get("kvs") or []
        return _entry(kvs[0]) if kvs else None

    async def range(
        self, prefix: str, *, start_after: str = "", limit: int = 0
    ) -> tuple[list[Entry], int]:
        start, end = _prefix_range(prefix.encode())
        if start_after:
            start = max(start, start_after.encode() + b"\0")
        request: dict[str, Any] = {"key": _b64(start), "range_end": _b64(end)}
        if limit:
            request["limit"] = str(limit)
        answer = await self._call("kv/range", request)
        entries = [_entry(kv) for kv in answer.get("kvs") or []]
        return entries, _revision(answer)

    # Writing.

    async def commit(
        self, compares: Sequence[Compare], operations: Sequence[Operation]
    ) -> int | None:
        request = {
            "compare": [
                {
                    "key": _b64(compare.key.encode()),
                    "target": "MOD",
                    "result": "EQUAL",
                    # etcd compares a missing key as mod_revision 0.
                    "mod_revision": str(compare.mod_revision),
                }
                for compare in compares
            ],
            "success": [_operation(operation) for operation in operations],
        }
        try:
            answer = await self._call("kv/txn", request)
        except EtcdError as error:
            if error.code == _NOT_FOUND and "lease not found" in error.etcd_message:
                raise HeliosError(
                    "a lease of the transaction has expired or does not exist"
                ) from None
            raise
        if not answer.get("succeeded", False):
            return None
        return _revision(answer)

    async def compact(self, revision: int) -> None:
        """Forget the history up to ``revision``; watches from before it get :class:`Compacted`."""
        await self._call("kv/compaction", {"revision": str(revision), "physical": True})

    # Watching.

    async def watch(
        self,
        prefix: str,
        start_revision: int,
        handler: WatchHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        start, end = _prefix_range(prefix.encode())
        request = {
            "create_request": {
                "key": _b64(start),
                "range_end": _b64(end),
                "start_revision": str(start_revision),
                "progress_notify": True,
            }
        }
        # etcd confirms the watch first and reports a compacted start right after,
        # so Compacted may come after task_status.started().
        async with self._stream("watch", request) as results:
            created = await self._first_result(results, "watch")
            _check_watch(created)
            if not created.get("created"):
                raise StoreUnavailable("etcd did not confirm the watch")
            task_status.started()
            while True:
                try:
                    result = await anext(results)
                except StopAsyncIteration:
                    raise StoreUnavailable("etcd ended the watch") from None
                _check_watch(result)
                events = [_event(raw) for raw in result.get("events") or []]
                handler(events, _watched_revision(events, result))

    # Leases.

    async def grant_lease(self, ttl_seconds: int) -> int:
        answer = await self._call("lease/grant", {"TTL": str(ttl_seconds)})
        return int(answer["ID"])

    async def keep_alive(self, lease: int) -> bool:
        with self._span("lease/keepalive"):
            async with self._stream("lease/keepalive", {"ID": str(lease)}) as results:
                result = await self._first_result(results, "lease/keepalive")
        # An expired lease comes back without a TTL.
        return int(result.get("TTL", 0)) > 0

    async def revoke_lease(self, lease: int) -> None:
        try:
            await self._call("lease/revoke", {"ID": str(lease)})
        except EtcdError as error:
            if error.code != _NOT_FOUND:
                raise

    # Health.

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless etcd answers a status request."""
        await self._call("maintenance/status", {})

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT_S):
            await self._client.aclose()

    # Calls.

    async def _call(self, path: str, request: dict[str, Any]) -> dict[str, Any]:
        """POST ``request`` to ``/v3/<path>``: the answer, or StoreUnavailable."""
        with self._span(path):
            try:
                with trio.fail_after(self._timeout_s):
                    response = await self._send(path, request, stream=False)
            except trio.TooSlowError:
                raise self._too_slow(path) from None
            answer = _decode(response.content, path)
            _check_answer(answer, response.status_code)
            return answer

    def _span(self, path: str) -> contextlib.AbstractContextManager[object]:
        """A CLIENT span for one call made for a traced request (a control-plane change).

        Background calls (the gateways' sync, probes and lease keep-alives) get
        none: every few seconds, they would bury the traces that matter.
        """
        if self._tracing is None:
            return contextlib.nullcontext()
        attributes = {"db.system": "etcd", "db.system.name": "etcd", "db.operation.name": path}
        return self._tracing.client_span(f"etcd {path}", attributes)

    def _stream(self, path: str, request: dict[str, Any]) -> _ResultStream:
        return _ResultStream(self, path, request)

    async def _first_result(
        self, results: AsyncIterator[dict[str, Any]], path: str
    ) -> dict[str, Any]:
        try:
            with trio.fail_after(self._timeout_s):
                return await anext(results)
        except trio.TooSlowError:
            raise self._too_slow(path) from None
        except StopAsyncIteration:
            raise StoreUnavailable(f"etcd ended {path} without an answer") from None

    async def _send(self, path: str, request: dict[str, Any], *, stream: bool) -> httpx.Response:
        """Send to the first endpoint that accepts a connection, authenticating as needed.

        A refused call comes back with its body read.
        """
        for attempt in range(2):
            response = await self._send_once(path, request, stream=stream)
            if response.status_code == 200:
                return response
            try:
                await response.aread()
            except httpx.HTTPError as error:
                await response.aclose()
                raise StoreUnavailable(f"the connection to etcd broke: {error!r}") from None
            if attempt or not self._username or _error_code(response.content) != _UNAUTHENTICATED:
                return response
            # A simple token lives in one member's memory: it dies with a restart
            # or when the call moves to another member. Log in again, once.
            await response.aclose()
            self._token = None
        raise AssertionError("unreachable")

    async def _send_once(
        self, path: str, request: dict[str, Any], *, stream: bool
    ) -> httpx.Response:
        last_error: httpx.TransportError | None = None
        for step in range(len(self._endpoints)):
            index = (self._current + step) % len(self._endpoints)
            endpoint = self._endpoints[index]
            try:
                headers = await self._headers(endpoint)
                response = await self._post(endpoint, path, request, headers, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                last_error = error
                self._token = None
                continue
            except httpx.HTTPError as error:
                raise StoreUnavailable(f"etcd at {_shown(endpoint)} failed: {error!r}") from None
            self._current = index
            return response
        raise StoreUnavailable(f"cannot connect to {self.description}: {last_error!r}")

    async def _post(
        self,
        endpoint: str,
        path: str,
        request: dict[str, Any],
        headers: dict[str, str],
        *,
        stream: bool,
    ) -> httpx.Response:
        # A stream may stay quiet for as long as nothing changes.
        timeout = httpx.Timeout(
            self._timeout_s,
            connect=self._connect_timeout_s,
            read=None if stream else self._timeout_s,
        )
        built = self._client.build_request(
            "POST", f"{endpoint}/v3/{path}", json=request, headers=headers, timeout=timeout
        )
        return await self._client.send(built, stream=stream)

    async def _headers(self, endpoint: str) -> dict[str, str]:
        if not self._username:
            return {}
        if self._token is None:
            credentials = {"name": self._username, "password": self._password}
            response = await self._post(
                endpoint, "auth/authenticate", credentials, {}, stream=False
            )
            answer = _decode(response.content, "auth/authenticate")
            _check_answer(answer, response.status_code)
            self._token = str(answer["token"])
        return {"Authorization": self._token}

    def _too_slow(self, path: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"{self.description} did not answer {path} within {self._timeout_ms} ms"
        )


class _ResultStream:
    """The ``result`` objects of a streaming call, one per line; closes its response."""

    def __init__(self, store: EtcdStore, path: str, request: dict[str, Any]) -> None:
        self._store = store
        self._path = path
        self._request = request
        self._response: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None

    async def __aenter__(self) -> _ResultStream:
        store = self._store
        try:
            with trio.fail_after(store._timeout_s):
                response = await store._send(self._path, self._request, stream=True)
        except trio.TooSlowError:
            raise store._too_slow(self._path) from None
        self._response = response
        if response.status_code != 200:
            await self._aclose()
            _check_answer(_decode(response.content, self._path), response.status_code)
        self._lines = response.aiter_lines()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._aclose()

    def __aiter__(self) -> _ResultStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        assert self._lines is not None
        while True:
            try:
                line = await anext(self._lines)
            except httpx.HTTPError as error:
                raise StoreUnavailable(f"the connection to etcd broke: {error!r}") from None
            if not line.strip():
                continue
            message = _decode(line.encode(), self._path)
            _check_answer(message, 200)
            result = message.get("result")
            if not isinstance(result, dict):
                raise StoreUnavailable(f"etcd sent {self._path} an unexpected {line!r}")
            return result

    async def _aclose(self) -> None:
        # Bounded clean-up that must run even when the call is being cancelled.
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT_S):
            if self._response is not None:
                await self._response.aclose()
            if self._lines is not None:
                # httpx reads lines through a stack of async generators, and
                # closing the outermost leaves the others to the garbage
                # collector (a ResourceWarning under trio). Reading on from the
                # closed response fails at the bottom of the stack and ends them all.
                with contextlib.suppress(Exception):
                    while True:
                        await anext(self._lines)


# Encoding.


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _prefix_range(prefix: bytes) -> tuple[bytes, bytes]:
    """The ``key`` and ``range_end`` of every key that starts with ``prefix``."""
    if not prefix:
        # In etcd, key "\0" to range_end "\0" is the whole key space.
        return b"\0", b"\0"
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return prefix, bytes(end)
        end.pop()
    return prefix, b"\0"


def _operation(operation: Operation) -> dict[str, Any]:
    if isinstance(operation, Put):
        put = {"key": _b64(operation.key.encode()), "value": _b64(operation.value)}
        if operation.lease:
            put["lease"] = str(operation.lease)
        return {"request_put": put}
    assert isinstance(operation, Delete)
    if operation.prefix:
        start, end = _prefix_range(operation.key.encode())
        return {"request_delete_range": {"key": _b64(start), "range_end": _b64(end)}}
    return {"request_delete_range": {"key": _b64(operation.key.encode())}}


def _entry(kv: dict[str, Any]) -> Entry:
    return Entry(
        _unb64(kv.get("key")).decode("utf-8", "replace"),
        _unb64(kv.get("value")),
        int(kv.get("create_revision", 0)),
        int(kv.get("mod_revision", 0)),
        int(kv.get("lease", 0)),
    )


def _event(raw: dict[str, Any]) -> Event:
    kv = raw.get("kv") or {}
    key = _unb64(kv.get("key")).decode("utf-8", "replace")
    revision = int(kv.get("mod_revision", 0))
    # PUT is the enum's zero value, which JSON leaves out.
    if raw.get("type", "PUT") == "DELETE":
        return Event("delete", key, b"", revision)
    return Event("put", key, _unb64(kv.get("value")), revision)


def _revision(answer: dict[str, Any]) -> int:
    return int((answer.get("header") or {}).get("revision", 0))


def _watched_revision(events: list[Event], result: dict[str, Any]) -> int:
    """The revision a watch message brings its watcher to.

    Not the header's revision when the message has events: catching up from
    the past, etcd sends at most 1000 revisions a message, each headed with the
    store's *current* revision; the watcher has only reached the last event's.
    etcd never splits one revision between messages (this watch asks for no
    fragments), so a watch resumed after it misses and repeats nothing. A
    message without events is a progress notification, which etcd sends only
    to a watcher it has sent every change up to the header's revision, on this
    same stream.
    """
    if events:
        return events[-1].mod_revision
    return _revision(result)


def _decode(content: bytes, path: str) -> dict[str, Any]:
    try:
        answer = json.loads(content)
    except ValueError:
        raise StoreUnavailable(f"etcd answered {path} with something not JSON") from None
    if not isinstance(answer, dict):
        raise StoreUnavailable(f"etcd answered {path} with something not an object")
    return answer


def _check_answer(answer: dict[str, Any], status_code: int) -> None:
    error = answer.get("error")
    if error is None and status_code == 200:
        return
    if isinstance(error, dict):
        # Streaming calls wrap their error in an object.
        answer, error = error, error.get("message")
    message = answer.get("message") or error or f"HTTP status {status_code}"
    raise EtcdError(int(answer.get("code", 2)), str(message))


def _error_code(content: bytes) -> int | None:
    try:
        answer = json.loads(content)
        return int(answer["code"])
    except (ValueError, KeyError, TypeError):
        return None


def _check_watch(result: dict[str, Any]) -> None:
    compact_revision = int(result.get("compact_revision", 0))
    if compact_revision:
        raise Compacted(compact_revision)
    if result.get("canceled"):
        reason = result.get("cancel_reason") or "no reason given"
        raise StoreUnavailable(f"etcd canceled the watch: {reason}")


def _shown(endpoint: str) -> str:
    """The endpoint without any credentials in it, for messages and logs."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
