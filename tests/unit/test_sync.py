"""A gateway following the control plane's store, in process, on trio's virtual clock.

The control plane writes through :class:`ControlPlane` into a memory store;
the gateway's :class:`PolicySync` follows it. Real etcd and real processes
are exercised by the end-to-end tests; here every step is exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
import trio
import trio.testing

from helios.control.model import Layout, Reset
from helios.control.plane import ControlPlane
from helios.errors import PermissionDenied, Unauthenticated
from helios.gateway.service import Check, Gateway
from helios.gateway.sync import PolicySync, SyncState
from helios.store.kv import Compacted, MemoryStore, StoreUnavailable, WatchHandler

from .support import make_gateway

BASE = {"tenant": "*", "resource": "*", "limit": 100, "window": "1m"}


class FlakyStore(MemoryStore):
    """A memory store that can be taken down and can drop its watch history."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self._went_down = trio.Event()
        self.compact_next_watch = False
        # The start revision of every watch, and the handler of the last one.
        self.watched_from: list[int] = []
        self.handler: WatchHandler | None = None

    def take_down(self, *, silently: bool = False) -> None:
        """Fail every call; the open watch fails too, unless it goes ``silently`` quiet."""
        self.down = True
        if not silently:
            self._went_down.set()

    def bring_up(self) -> None:
        self.down = False
        self._went_down = trio.Event()

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("the store is down")

    async def get(self, key: str):  # type: ignore[no-untyped-def]
        self._check()
        return await super().get(key)

    async def range(self, prefix: str, *, start_after: str = "", limit: int = 0):  # type: ignore[no-untyped-def]
        self._check()
        return await super().range(prefix, start_after=start_after, limit=limit)

    async def commit(self, compares: Sequence, operations: Sequence):  # type: ignore[no-untyped-def]
        self._check()
        return await super().commit(compares, operations)

    async def watch(
        self,
        prefix: str,
        start_revision: int,
        handler: WatchHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._check()
        self.watched_from.append(start_revision)
        self.handler = handler
        if self.compact_next_watch:
            self.compact_next_watch = False
            raise Compacted(self.revision)
        went_down = self._went_down
        async with trio.open_nursery() as nursery:
            nursery.start_soon(super().watch, prefix, start_revision, handler)
            task_status.started()
            await went_down.wait()
            nursery.cancel_scope.cancel()
        raise StoreUnavailable("lost the watch")


@pytest.fixture
async def world() -> AsyncIterator[World]:
    store = FlakyStore()
    gateway = make_gateway(BASE)
    world = World(store, gateway)
    async with trio.open_nursery() as nursery:
        await nursery.start(world.sync.run)
        world.nursery = nursery
        yield world
        nursery.cancel_scope.cancel()


class World:
    def __init__(self, store: FlakyStore, gateway: Gateway) -> None:
        self.store = store
        self.gateway = gateway
        self.plane = ControlPlane(store, Layout(), wall_clock=lambda: 1_800_000_000.0)
        self.resets: list[Reset] = []
        self.sync = PolicySync(
            gateway,
            store,
            Layout(),
            base_policies=list(gateway.policies),
            on_reset=self.resets.append,
        )
        self.nursery: trio.Nursery

    async def settle(self) -> None:
        """Let the sync apply whatever the store holds."""
        await trio.testing.wait_all_tasks_blocked()

    def spend(self, tenant: str, resource: str, times: int) -> int:
        remaining = -1
        for _ in range(times):
            decision = self.gateway.decide(Check(tenant, resource, 1), None)
            assert decision.allowed
            remaining = decision.remaining
        return remaining


async def test_a_policy_put_applies_and_spent_units_carry_over(world: World) -> None:
    await world.plane.create_tenant("acme")
    await world.plane.put_policy("acme", "search", {"limit": 10, "window": "1h"})
    await world.settle()
    assert world.gateway.policies.resolve("acme", "search").bands[0].limit == 10  # type: ignore[union-attr]
    assert world.spend("acme", "search", 7) == 3

    # Raised to 20: the 7 spent stay spent.
    await world.plane.put_policy("acme", "search", {"limit": 20, "window": "1h"})
    await world.settle()
    quota = world.gateway.quota("acme", "search", None)
    assert quota.decision.remaining == 13

    # Lowered to 5: none left, not a refill.
    await world.plane.put_policy("acme", "search", {"limit": 5, "window": "1h"})
    await world.settle()
    decision = world.gateway.decide(Check("acme", "search", 1), None)
    assert not decision.allowed
    assert decision.remaining == 0
    assert world.sync.revision == world.store.revision
    assert world.gateway.policies.revision == world.store.revision


async def test_store_policies_override_the_base_and_deleting_one_restores_it(
    world: World,
) -> None:
    await world.plane.create_tenant("*")
    await world.plane.put_policy("*", "*", {"limit": 3, "window": "1s"})
    await world.settle()
    assert world.gateway.policies.resolve("x", "y").bands[0].limit == 3  # type: ignore[union-attr]
    assert len(world.gateway.policies) == 1

    await world.plane.delete_policy("*", "*")
    await world.settle()
    assert world.gateway.policies.resolve("x", "y").bands[0].limit == 100  # type: ignore[union-attr]


async def test_an_unchanged_policy_keeps_its_identity_across_other_changes(world: World) -> None:
    await world.plane.create_tenant("acme")
    await world.plane.put_policy("acme", "a", {"limit": 10, "window": "1h"})
    await world.settle()
    before = world.gateway.policies.resolve("acme", "a")
    await world.plane.put_policy("acme", "b", {"limit": 10, "window": "1h"})
    await world.settle()
    assert world.gateway.policies.resolve("acme", "a") is before


async def test_tenant_keys_work_for_their_tenant_only_and_stop_when_revoked(
    world: World,
) -> None:
    await world.plane.create_tenant("acme")
    await world.plane.create_tenant("globex")
    record, key = await world.plane.issue_key("acme")
    await world.settle()

    owner = world.gateway.identify(key)
    assert owner == "acme"
    world.gateway.decide(Check("acme", "search", 1), owner)
    with pytest.raises(PermissionDenied):
        world.gateway.decide(Check("globex", "search", 1), owner)

    await world.plane.revoke_key("acme", record.id)
    await world.settle()
    with pytest.raises(Unauthenticated):
        world.gateway.identify(key)


async def test_deleting_a_tenant_revokes_its_keys(world: World) -> None:
    await world.plane.create_tenant("acme")
    _, key = await world.plane.issue_key("acme")
    await world.settle()
    assert world.gateway.identify(key) == "acme"
    await world.plane.delete_tenant("acme")
    await world.settle()
    with pytest.raises(Unauthenticated):
        world.gateway.identify(key)


async def test_resets_that_arrive_are_applied_and_old_ones_are_not(world: World) -> None:
    await world.plane.create_tenant("acme")
    await world.plane.reset("acme", "search")
    await world.settle()
    assert [(r.tenant, r.resource) for r in world.resets] == [("acme", "search")]

    # A second gateway starting now sees the reset in its snapshot: already done.
    late = make_gateway(BASE)
    seen: list[Reset] = []
    sync = PolicySync(late, world.store, Layout(), on_reset=seen.append)
    await world.nursery.start(sync.run)
    await world.settle()
    assert seen == []


async def test_reset_counters_forgets_a_tenants_buckets() -> None:
    gateway = make_gateway(BASE)
    gateway.decide(Check("acme", "a", 5), None)
    gateway.decide(Check("acme", "b", 5), None)
    gateway.decide(Check("globex", "a", 5), None)
    assert await gateway.reset_counters("acme", "a") == 1
    assert gateway.quota("acme", "a", None).decision.remaining == 100
    assert gateway.quota("acme", "b", None).decision.remaining == 95
    assert await gateway.reset_counters("acme") == 1
    assert gateway.quota("acme", "b", None).decision.remaining == 100
    assert gateway.quota("globex", "a", None).decision.remaining == 95


async def test_while_the_store_is_down_the_last_policies_serve_and_ready_warns(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    await world.plane.create_tenant("acme")
    await world.plane.put_policy("acme", "search", {"limit": 10, "window": "1h"})
    await world.settle()
    world.spend("acme", "search", 4)

    world.store.take_down()
    await world.settle()
    assert world.sync.state is SyncState.STALE
    assert "policies may be stale" in world.gateway.ready_warnings()[0]
    assert world.spend("acme", "search", 1) == 5

    # Changed while the gateway could not see it (the store's own API).
    world.store.bring_up()
    await world.plane.put_policy("acme", "search", {"limit": 20, "window": "1h"})
    await trio.sleep(5)
    assert world.sync.state is SyncState.WATCHING
    assert world.gateway.ready_warnings() == []
    assert world.gateway.quota("acme", "search", None).decision.remaining == 15
    # Resumed from the last revision it had applied: no snapshot needed.
    assert world.sync.resyncs == 0


async def test_a_compacted_history_means_a_fresh_snapshot(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    await world.plane.create_tenant("acme")
    await world.settle()
    world.store.compact_next_watch = True
    world.store.take_down()
    await world.settle()
    world.store.bring_up()
    await world.plane.put_policy("acme", "search", {"limit": 7, "window": "1h"})
    await trio.sleep(5)
    assert world.gateway.policies.resolve("acme", "search").bands[0].limit == 7  # type: ignore[union-attr]
    assert world.sync.statistics().errors.get("compacted") == 1
    assert world.sync.resyncs == 1


async def test_a_progress_report_moves_the_watch_on_and_publishes_nothing(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    from helios.store.kv import Put

    await world.plane.create_tenant("acme")
    await world.settle()
    served = world.gateway.policies
    # Changes outside the prefix; the store reports that the watch has seen
    # everything up to them (as etcd does for a quiet watch), then an older report.
    await world.store.commit([], [Put("/elsewhere/a", b"1")])
    ahead = world.store.revision
    assert world.store.handler is not None
    world.store.handler([], ahead)
    world.store.handler([], ahead - 1)
    assert world.sync.revision == ahead
    assert world.gateway.policies is served

    world.store.take_down()
    await world.settle()
    world.store.bring_up()
    await trio.sleep(5)
    assert world.store.watched_from[-1] == ahead + 1


async def test_a_bad_document_in_the_store_is_ignored_and_the_previous_version_kept(
    world: World,
) -> None:
    from helios.store.kv import Compare, Put

    await world.plane.create_tenant("acme")
    await world.plane.put_policy("acme", "search", {"limit": 10, "window": "1h"})
    await world.settle()
    key = Layout().policy("acme", "search")
    entry = await world.store.get(key)
    assert entry is not None
    await world.store.commit([Compare(key, entry.mod_revision)], [Put(key, b'{"limit": 0}')])
    await world.settle()
    assert world.gateway.policies.resolve("acme", "search").bands[0].limit == 10  # type: ignore[union-attr]
    assert world.sync.statistics().errors["invalid_document"] == 1


async def test_a_registration_writes_only_when_the_policies_change(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    from helios.control.model import GatewayInfo
    from helios.gateway.sync import Registration

    info = GatewayInfo("g1", "127.0.0.1:8080", "fast", "0", 0, 0.0)
    registration = Registration(world.store, Layout(), info, world.sync, ttl_seconds=3)
    world.nursery.start_soon(registration.run)
    await trio.sleep(1)
    first = world.store.revision
    listed = await world.plane.list_gateways()
    assert [g.id for g in listed] == ["g1"]

    # A minute of keep-alives: the lease is renewed, nothing is written.
    await trio.sleep(60)
    assert world.store.revision == first

    await world.plane.create_tenant("acme")
    await world.plane.put_policy("acme", "search", {"limit": 1, "window": "1s"})
    await trio.sleep(5)
    (gateway,) = await world.plane.list_gateways()
    assert gateway.revision == world.gateway.policies.revision
    # The two changes, and one write of the new revision.
    assert world.store.revision == first + 3


async def test_a_watch_that_goes_quiet_while_the_store_is_unreachable_is_noticed(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    from helios.gateway.sync import PROBE_SECONDS

    await world.plane.create_tenant("acme")
    await world.settle()
    # A broken network: the watch stream says nothing, and no call gets through.
    world.store.take_down(silently=True)
    await trio.sleep(PROBE_SECONDS + 0.5)
    assert world.sync.state is SyncState.STALE
    assert world.gateway.ready_warnings()

    world.store.bring_up()
    await world.plane.put_policy("acme", "search", {"limit": 4, "window": "1h"})
    await trio.sleep(5)
    assert world.sync.state is SyncState.WATCHING
    assert world.gateway.policies.resolve("acme", "search").bands[0].limit == 4  # type: ignore[union-attr]


async def test_a_reset_missed_while_away_is_applied_from_the_next_snapshot(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    await world.plane.create_tenant("acme")
    await world.settle()
    world.store.take_down()
    await world.settle()
    # While the gateway cannot watch, a reset is made and the history that
    # would have shown it to the gateway is compacted away.
    world.store.compact_next_watch = True
    world.store.bring_up()
    await world.plane.reset("acme", "search")
    await trio.sleep(5)
    assert [(r.tenant, r.resource) for r in world.resets] == [("acme", "search")]
    assert world.sync.resyncs == 1

    # Applied once: neither a later snapshot nor the lease's end repeats it.
    world.store.compact_next_watch = True
    world.store.take_down()
    await trio.sleep(1)
    world.store.bring_up()
    await trio.sleep(400)
    assert len(world.resets) == 1
