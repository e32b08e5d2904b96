"""Admins racing on one policy, on a memory store and on a real etcd.

Every write of the control plane reads, checks, then commits a transaction
that compares the revisions it read. Here the commits are held until every
racer has read, so each racer passes the checks made before the commit and
only the store's compare-and-swap can tell them apart: it must let exactly
one through.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import trio
from control_support import ADMIN_KEY, WALL_CLOCK, Answer, Api, CountingStore
from etcd_servers import EtcdServer

from helios.control.model import Layout
from helios.control.plane import ControlPlane
from helios.control.rest import create_app
from helios.gateway.auth import KeyRing
from helios.store.etcd import EtcdStore
from helios.store.kv import Compare, KeyValueStore, Operation

RACERS = 6
PATH = "/v1/tenants/acme/policies/search"
_prefixes = itertools.count()


class HeldCommits:
    """A store whose commits, once :meth:`hold` is called, wait until ``count`` are waiting."""

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store
        self.description = store.description
        self._count = 0
        self._waiting = 0
        self._all_there = trio.Event()

    def hold(self, count: int) -> None:
        self._count, self._waiting, self._all_there = count, 0, trio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def commit(self, compares: Sequence[Compare], operations: Sequence[Operation]) -> Any:
        if self._count:
            self._waiting += 1
            if self._waiting == self._count:
                self._count = 0
                self._all_there.set()
            await self._all_there.wait()
        return await self.store.commit(compares, operations)


@pytest.fixture(params=["memory", "etcd"])
async def racing(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Api, HeldCommits]]:
    """The REST API over a store whose commits can be held (etcd: one shared by the session)."""
    if request.param == "memory":
        inner: KeyValueStore = CountingStore()
        layout = Layout()
    else:
        etcd: EtcdServer = request.getfixturevalue("shared_etcd_server")
        inner = EtcdStore([etcd.url], timeout_ms=2000)
        layout = Layout(f"/races-{next(_prefixes)}/")
    store = HeldCommits(inner)
    plane = ControlPlane(store, layout, wall_clock=lambda: WALL_CLOCK)  # type: ignore[arg-type]
    api = Api(create_app(plane, KeyRing([ADMIN_KEY])).test_client(), CountingStore())
    try:
        yield api, store
    finally:
        await inner.aclose()


async def _race(api: Api, store: HeldCommits, headers: dict[str, str]) -> list[Answer]:
    """RACERS concurrent PUTs of the policy, racer i asking for limit 100 + i."""
    answers: list[Answer] = []

    async def put(limit: int) -> None:
        answers.append(await api("PUT", PATH, {"limit": limit, "window": "1h"}, headers=headers))

    store.hold(RACERS)
    async with trio.open_nursery() as nursery:
        for i in range(RACERS):
            nursery.start_soon(put, 100 + i)
    return answers


def _one_winner(answers: list[Answer], status: int) -> dict[str, Any]:
    """The winner's policy; every other racer got 409 from the store's comparison."""
    assert sorted(answer.status for answer in answers) == [status] + [409] * (RACERS - 1), [
        answer.text for answer in answers
    ]
    for answer in answers:
        if answer.status == 409:
            assert answer.body["field"] == "revision"
            # Refused by the transaction: no check before it saw a newer revision.
            assert "now at revision" not in answer.body["error"]
    (winner,) = [answer for answer in answers if answer.status == status]
    assert winner.headers["etag"] == f'"{winner.body["revision"]}"'
    return winner.body  # type: ignore[no-any-return]


async def test_racers_creating_one_policy_one_creates_it_the_others_get_409(
    racing: tuple[Api, HeldCommits],
) -> None:
    api, store = racing
    assert (await api("POST", "/v1/tenants", {"name": "acme"})).status == 201
    winner = _one_winner(await _race(api, store, {}), 201)
    assert (await api("GET", PATH)).body == winner


async def test_racers_with_the_same_if_match_one_wins_the_others_get_409(
    racing: tuple[Api, HeldCommits],
) -> None:
    api, store = racing
    assert (await api("POST", "/v1/tenants", {"name": "acme"})).status == 201
    assert (await api("PUT", PATH, {"limit": 1, "window": "1h"})).status == 201
    for _ in range(3):
        etag = (await api("GET", PATH)).headers["etag"]
        winner = _one_winner(await _race(api, store, {"If-Match": etag}), 200)
        stored = await api("GET", PATH)
        assert stored.body == winner
        assert stored.headers["etag"] != etag


async def test_racers_without_if_match_still_do_not_overwrite_each_other(
    racing: tuple[Api, HeldCommits],
) -> None:
    api, store = racing
    assert (await api("POST", "/v1/tenants", {"name": "acme"})).status == 201
    assert (await api("PUT", PATH, {"limit": 1, "window": "1h"})).status == 201
    winner = _one_winner(await _race(api, store, {}), 200)
    assert (await api("GET", PATH)).body == winner
