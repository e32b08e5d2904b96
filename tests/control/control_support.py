"""Helpers for the control plane's tests: a counting MemoryStore and a small request helper."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quart.typing import TestClientProtocol

from helios.store.kv import Compare, MemoryStore, Operation

ADMIN_KEY = "admin-key-for-tests-1234"
# A wall clock for the timestamps admins see: 2027-01-15T08:00:00Z.
WALL_CLOCK = 1_800_000_000.0


class CountingStore(MemoryStore):
    """A MemoryStore that counts reads and writes, to show what a request looked at."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def get(self, key: str) -> Any:
        self.calls += 1
        return await super().get(key)

    async def range(self, prefix: str, *, start_after: str = "", limit: int = 0) -> Any:
        self.calls += 1
        return await super().range(prefix, start_after=start_after, limit=limit)

    async def commit(self, compares: Sequence[Compare], operations: Sequence[Operation]) -> Any:
        self.calls += 1
        return await super().commit(compares, operations)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any
    text: str


class Api:
    """Requests to the app, with the admin key unless told otherwise."""

    def __init__(self, client: TestClientProtocol, store: CountingStore) -> None:
        self.client = client
        self.store = store

    async def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = ADMIN_KEY,
    ) -> Answer:
        sent = dict(headers or {})
        if key is not None:
            sent.setdefault("X-API-Key", key)
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        response = await self.client.open(path, method=method, headers=sent, data=data or b"")
        text = await response.get_data(as_text=True)
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        return Answer(
            response.status_code, {k.lower(): v for k, v in response.headers.items()}, parsed, text
        )
