"""Helpers of the STRONG-mode tests: asking a gateway for decisions, reading Redis back.

Decisions go over real HTTP with httpx; Redis is read with redis-py's
synchronous client (through the ``RedisServer`` objects of ``redis_servers``),
never through the client under test.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import trio
from e2e_support import API_KEY, HeliosProcess
from prometheus_client.parser import text_string_to_metric_families
from redis_servers import RedisServer

GatewayFactory = Callable[..., HeliosProcess]
"""The ``gateway_factory`` fixture: ``start(policies, redis_url=..., settings=...)``."""

T = TypeVar("T")
R = TypeVar("R")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# Every key Helios writes, with its PTTL, read in one atomic step.
_KEYS_WITH_TTL = """
local keys = redis.call('KEYS', ARGV[1])
local result = {}
for _, key in ipairs(keys) do
  result[#result + 1] = key
  result[#result + 1] = redis.call('PTTL', key)
end
return result
"""


@dataclass
class Answer:
    """One HTTP answer of a gateway, with the time the client waited for it."""

    status: int
    body: dict[str, Any]
    headers: httpx.Headers
    seconds: float

    @property
    def allowed(self) -> bool:
        return bool(self.body.get("allowed"))

    @property
    def remaining(self) -> int:
        return int(self.body["remaining"])

    @property
    def mode(self) -> str | None:
        return self.body.get("mode")


def client(helios: HeliosProcess, *, timeout: float = 5.0) -> httpx.AsyncClient:
    """An HTTP client of ``helios`` that sends the test API key; close it (``async with``)."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    return httpx.AsyncClient(
        base_url=helios.url, headers={"X-API-Key": API_KEY}, timeout=timeout, limits=limits
    )


async def _timed(request: Awaitable[httpx.Response]) -> Answer:
    started = time.perf_counter()
    response = await request
    seconds = time.perf_counter() - started
    return Answer(response.status_code, response.json(), response.headers, seconds)


async def allow(
    http: httpx.AsyncClient, tenant: str, resource: str = "default", cost: int = 1
) -> Answer:
    """``POST /api/v1/allow`` with a JSON body (any characters in the names)."""
    body = {"tenant": tenant, "resource": resource, "cost": cost}
    return await _timed(http.post("/api/v1/allow", json=body))


async def allow_get(
    http: httpx.AsyncClient, tenant: str, resource: str = "default", cost: int = 1
) -> Answer:
    """``GET /allow?tenant=&resource=&cost=``."""
    params = {"tenant": tenant, "resource": resource, "cost": str(cost)}
    return await _timed(http.get("/allow", params=params))


async def batch(http: httpx.AsyncClient, checks: Sequence[tuple[str, str, int]]) -> Answer:
    """``POST /api/v1/allow/batch``; the body's ``results`` hold one entry per check."""
    body = {
        "checks": [
            {"tenant": tenant, "resource": resource, "cost": cost}
            for tenant, resource, cost in checks
        ]
    }
    return await _timed(http.post("/api/v1/allow/batch", json=body))


async def quota(http: httpx.AsyncClient, tenant: str, resource: str = "default") -> Answer:
    """``GET /api/v1/quota/{tenant}?resource=``: the bucket's figures, charging nothing."""
    path = "/api/v1/quota/" + quote(tenant, safe="")
    return await _timed(http.get(path, params={"resource": resource}))


async def gather(
    function: Callable[[T], Awaitable[R]], items: Sequence[T], *, concurrency: int
) -> list[R]:
    """``function(item)`` for every item, at most ``concurrency`` at a time; results in order."""
    results: list[R | None] = [None] * len(items)
    limiter = trio.CapacityLimiter(concurrency)

    async def one(index: int, item: T) -> None:
        async with limiter:
            results[index] = await function(item)

    async with trio.open_nursery() as nursery:
        for index, item in enumerate(items):
            nursery.start_soon(one, index, item)
    return results  # type: ignore[return-value]


def key_slot(server: RedisServer, key: str | bytes) -> int:
    """``CLUSTER KEYSLOT``: the hash slot Redis Cluster assigns to ``key``."""
    reply = server.execute("CLUSTER", "KEYSLOT", key)
    assert isinstance(reply, int)
    return reply


def redis_time(server: RedisServer) -> float:
    """The server's clock (``TIME``), in Unix seconds."""
    reply = server.execute("TIME")  # redis-py parses it into a tuple
    assert isinstance(reply, tuple)
    seconds, microseconds = reply
    return int(seconds) + int(microseconds) / 1e6


async def clear_of_window_end(server: RedisServer, window_seconds: float, margin: float) -> None:
    """Wait, if need be, until the current epoch-aligned window has ``margin`` s left.

    A test that must see one window from start to end calls this first; the
    wait is at most ``margin`` seconds and is needed only that close to a boundary.
    """
    left = window_seconds - redis_time(server) % window_seconds
    if left < margin:
        await trio.sleep(left + 0.05)


async def window_start(server: RedisServer, window_seconds: float, offset: float = 0.02) -> None:
    """Wait until ``offset`` s after the next epoch-aligned window boundary (Redis time)."""
    left = window_seconds - redis_time(server) % window_seconds
    await trio.sleep(left + offset)


def keys_with_ttl(server: RedisServer, pattern: str = "helios:*") -> dict[str, int]:
    """Every key matching ``pattern`` with its PTTL, read atomically (one script)."""
    reply = server.execute("EVAL", _KEYS_WITH_TTL, 0, pattern)
    assert isinstance(reply, list)
    return {
        reply[i].decode("utf-8", "surrogateescape"): int(reply[i + 1])
        for i in range(0, len(reply), 2)
    }


def hash_state(server: RedisServer, key: str) -> tuple[dict[bytes, bytes], int]:
    """A key's hash fields and its PTTL."""
    with server.client() as redis:
        pipeline = redis.pipeline(transaction=True)
        pipeline.hgetall(key)
        pipeline.pttl(key)
        fields, pttl = pipeline.execute()
    return dict(fields), int(pttl)


async def metrics(helios: HeliosProcess) -> Samples:
    """The gateway's Prometheus samples: (name, labels) -> value."""
    async with httpx.AsyncClient(timeout=5.0) as http:
        text = (await http.get(f"{helios.metrics_url}/metrics")).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def wait_for(
    what: str, check: Callable[[], Awaitable[bool]], *, seconds: float, interval: float = 0.05
) -> float:
    """Poll ``check`` until it is true; returns the seconds it took; fails after ``seconds``."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"timed out after {seconds} s waiting until {what}")
        await trio.sleep(interval)
    return time.monotonic() - started
