"""A gateway's sync on a real etcd, where etcd's watch does what a memory store does not."""

from __future__ import annotations

import pytest
import trio
from etcd_servers import EtcdServer
from store_support import DELIVERY_TIMEOUT_S, put_each

from helios.backends.memory import BucketTable
from helios.control.model import Layout
from helios.control.plane import ControlPlane
from helios.core.policy import PolicySet, parse_policy
from helios.errors import Unauthenticated
from helios.gateway.auth import KeyRing
from helios.gateway.service import Clock, Gateway
from helios.gateway.sync import PolicySync
from helios.store.etcd import EtcdStore
from helios.store.kv import Event, StoreUnavailable, WatchHandler

BASE = {"tenant": "*", "resource": "*", "limit": 100, "window": "1m"}
POLICY = b'{"algorithm":"token_bucket","bands":[{"limit":5,"window":"1m"}]}'


class FallingBehindStore(EtcdStore):
    """etcd, with a gateway that falls behind: its first watch starts only on
    :attr:`go_ahead`, and breaks right after etcd's first message, as a
    connection lost in the middle of catching up would."""

    def __init__(self, endpoint: str) -> None:
        super().__init__([endpoint], timeout_ms=2000)
        self.go_ahead = trio.Event()
        self.resumed = trio.Event()
        self.watches = 0

    async def watch(
        self,
        prefix: str,
        start_revision: int,
        handler: WatchHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.watches += 1
        if self.watches > 1:
            self.resumed.set()
            await super().watch(prefix, start_revision, handler, task_status=task_status)
            return
        await self.go_ahead.wait()

        def first_message_only(events: list[Event], revision: int) -> None:
            handler(events, revision)
            raise StoreUnavailable("the watch broke after etcd's first message")

        await super().watch(prefix, start_revision, first_message_only, task_status=task_status)


async def test_a_gateway_behind_by_more_than_one_message_misses_no_change_when_its_watch_breaks(
    shared_etcd_server: EtcdServer,
) -> None:
    layout = Layout("/sync-behind/")
    store = FallingBehindStore(shared_etcd_server.url)
    plane = ControlPlane(store, layout)
    gateway = Gateway(PolicySet([parse_policy(BASE)]), BucketTable(1000), KeyRing([]), Clock())
    sync = PolicySync(gateway, store, layout, base_policies=list(gateway.policies))
    try:
        await plane.create_tenant("acme")
        record, key = await plane.issue_key("acme")
        async with trio.open_nursery() as nursery:
            await nursery.start(sync.run)
            assert gateway.identify(key) == "acme"

            # More changes than etcd sends in one message, then a revocation.
            policies = [layout.policy("acme", f"r{i:04d}") for i in range(1200)]
            await put_each(store, policies, POLICY)
            await plane.revoke_key("acme", record.id)
            _, revoked_at = await store.range(layout.keys())
            store.go_ahead.set()

            # Until the watch has been resumed and the gateway claims the revocation.
            with trio.fail_after(DELIVERY_TIMEOUT_S):
                await store.resumed.wait()
                while sync.revision < revoked_at:
                    await sync.changed.wait()
            nursery.cancel_scope.cancel()

        assert sync.statistics().policies == len(policies)
        with pytest.raises(Unauthenticated):
            gateway.identify(key)
        # What the gateway registers as the revision it serves.
        assert gateway.policies.revision == revoked_at
    finally:
        await store.aclose()
