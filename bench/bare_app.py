"""Bare ASGI reference app for the Helios benchmark.

No framework, no routing, no state: every HTTP request is answered with status
200 and the same decision JSON body (and rate-limit headers) that Helios's
``/allow`` endpoint returns for an allowed request.  Served by hypercorn's trio
worker, it gives the "best case" for a hypercorn-on-trio server on this machine,
against which ``bench/run.py`` compares the Helios gateway::

    python -m hypercorn --worker-class trio --bind 127.0.0.1:PORT bench.bare_app:app
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DECISION: dict[str, Any] = {
    "allowed": True,
    "tenant": "acme",
    "resource": "demo",
    "limit": 1_000_000_000,
    "remaining": 999_999_999,
    "reset_seconds": 1,
    "reset_time": 1_796_300_000,
    "retry_after_seconds": 0,
    "retry_after_ms": 0,
    "policy": "*/*",
}

BODY: bytes = json.dumps(DECISION, separators=(", ", ": ")).encode()

HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
    (b"x-ratelimit-limit", str(DECISION["limit"]).encode()),
    (b"x-ratelimit-remaining", str(DECISION["remaining"]).encode()),
    (b"x-ratelimit-reset", str(DECISION["reset_seconds"]).encode()),
]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI entry point: answer every HTTP request with the fixed decision."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
