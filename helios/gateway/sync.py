"""Keeping a gateway in step with the control plane's store.

How it works: the gateway loads a snapshot of every policy, API key and
pending reset under the store's prefix, applies it, then watches from the
next revision and applies each change as it arrives (etcd delivers changes
within milliseconds, so a policy PUT reaches every gateway well within a
second). Policies are rebuilt into a new :class:`PolicySet` on each change;
policies whose document did not change keep their identity, so their buckets
are untouched, and changed ones carry their spent units over (see
:func:`helios.core.decision.migrate`).

The sync's states, and what moves it between them::

    LOADING  --snapshot applied-->            WATCHING
    WATCHING --watch lost / store down-->     STALE     (keep serving the last policies)
    STALE    --watch resumed-->               WATCHING  (from the last applied revision)
    WATCHING, STALE --history compacted-->    LOADING   (a fresh snapshot)

While STALE, ``/ready`` stays 200 (a gateway that can still decide should
not be pulled from its load balancer because etcd is down) but says that the
policies may be stale.

Resets found in the first snapshot are already done (a gateway that was not
up has no counters to reset). Later, each reset is applied once, whether it
arrives through the watch or in a snapshot loaded after a compaction; a reset
stays in the store for five minutes, so a gateway that loses the store for
less than that misses none.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import secrets
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

import trio

from helios import __version__
from helios.control.model import (
    KEYS,
    POLICIES,
    RESETS,
    GatewayInfo,
    Layout,
    Reset,
    dump,
    load,
    policy_from_document,
)
from helios.core.policy import Policy, PolicySet
from helios.errors import BackendError, HeliosError
from helios.gateway.service import Gateway
from helios.store.kv import Compacted, Entry, Event, KeyValueStore, Put

log = logging.getLogger("helios.sync")

# Backoff between attempts to reach the store again.
RETRY_MIN_SECONDS = 0.1
RETRY_MAX_SECONDS = 2.0
# How often a gateway checks that the store it watches still answers.
PROBE_SECONDS = 3.0


class _Started:
    """A task status that calls back when the watch reports it is established."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback

    def started(self, value: object = None) -> None:
        self._callback()


class SyncState(enum.Enum):
    LOADING = "loading"
    WATCHING = "watching"
    STALE = "stale"


@dataclass(slots=True)
class _StoredPolicy:
    mod_revision: int
    policy: Policy


@dataclass
class SyncStatistics:
    state: SyncState
    revision: int
    policies: int
    tenant_keys: int
    resyncs: int
    resets_applied: int
    stale_since: float | None = None
    errors: dict[str, int] = field(default_factory=dict)


class PolicySync:
    """Applies the store's policies, tenant keys and resets to one gateway."""

    def __init__(
        self,
        gateway: Gateway,
        store: KeyValueStore,
        layout: Layout,
        *,
        base_policies: Iterable[Policy] = (),
        on_reset: Callable[[Reset], None] | None = None,
    ) -> None:
        self.gateway = gateway
        self.store = store
        self.layout = layout
        self.state = SyncState.LOADING
        self.revision = 0
        self.resyncs = 0
        self.resets_applied = 0
        # trio time at which the store stopped answering (None while it answers).
        self.stale_since: float | None = None
        # How long to wait before trying the store again.
        self.delay = RETRY_MIN_SECONDS
        self.changed = trio.Event()
        self._base = list(base_policies)
        self._policies: dict[str, _StoredPolicy] = {}
        # Store key -> (tenant, SHA-256 digest) of an issued API key.
        self._keys: dict[str, tuple[str, bytes]] = {}
        self._on_reset = on_reset
        self._errors: dict[str, int] = {}
        self._started = False
        # Store keys of the resets this gateway has done (or found done at start).
        self._resets_seen: set[str] = set()
        # Why the store stopped answering while a watch seemed alive.
        self._probe_failure: BackendError | None = None
        gateway.ready_warnings = self.warnings

    # Inputs.

    def set_base(self, policies: Iterable[Policy]) -> None:
        """Replace the policies that come from the policy file (the store's override them)."""
        self._base = list(policies)
        self._publish()

    # Running.

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load, then follow the store until cancelled; reports started after the first load.

        The first load must succeed (a gateway with no policies cannot serve).
        Later, a lost watch is resumed from the last applied revision, so no
        change is missed; if the store no longer has that history, a fresh
        snapshot is loaded.
        """
        await self._load()
        self._started = True
        task_status.started()
        while True:
            try:
                await self._follow()
            except Compacted as error:
                log.warning(
                    "the store compacted its history past revision %d (to %d); loading a snapshot",
                    self.revision,
                    error.compact_revision,
                )
                self._count_error("compacted")
                try:
                    await self._load()
                    continue
                except BackendError as load_error:
                    self._went_stale(load_error)
            except BackendError as error:
                self._went_stale(error)
            await trio.sleep(self.delay)
            self.delay = min(self.delay * 2, RETRY_MAX_SECONDS)

    async def _follow(self) -> None:
        """Watch from the next revision until the watch fails or the store stops answering.

        A watch stream that merely goes quiet cannot tell a store with nothing
        to say from one behind a broken network, so the store is also asked a
        small question every few seconds; no answer ends the watch.
        """
        failure: HeliosError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._probe, nursery.cancel_scope)
            try:
                await self.store.watch(
                    self.layout.prefix,
                    self.revision + 1,
                    self._apply_events,
                    task_status=cast(trio.TaskStatus[None], _Started(self._recovered)),
                )
            except (Compacted, BackendError) as error:
                failure = error
            nursery.cancel_scope.cancel()
        failure = failure or self._probe_failure
        self._probe_failure = None
        if failure is not None:
            raise failure

    async def _probe(self, watching: trio.CancelScope) -> None:
        while True:
            await trio.sleep(PROBE_SECONDS)
            try:
                await self.store.get(self.layout.prefix)
            except BackendError as error:
                self._probe_failure = error
                watching.cancel()
                return

    async def _load(self) -> None:
        entries, revision = await self.store.range(self.layout.prefix)
        self._apply_snapshot(entries, revision)
        self._recovered()

    def _recovered(self) -> None:
        self.delay = RETRY_MIN_SECONDS
        if self.stale_since is not None:
            log.info("the store answers again; following it from revision %d", self.revision)
        self.stale_since = None
        self.state = SyncState.WATCHING

    def _went_stale(self, error: HeliosError) -> None:
        self._count_error(type(error).__name__)
        if self.stale_since is None:
            self.stale_since = trio.current_time()
            log.warning(
                "lost the store (%s); serving the last policies (revision %d) until it answers",
                error.message,
                self.revision,
            )
        self.state = SyncState.STALE

    def _count_error(self, kind: str) -> None:
        self._errors[kind] = self._errors.get(kind, 0) + 1

    # Applying.

    def _apply_snapshot(self, entries: list[Entry], revision: int) -> None:
        policies: dict[str, _StoredPolicy] = {}
        keys: dict[str, tuple[str, bytes]] = {}
        resets: list[Entry] = []
        for entry in entries:
            kind, names = self.layout.kind(entry.key)
            if kind == POLICIES:
                stored = self._parse_policy(entry.key, names, entry.value, entry.mod_revision)
                if stored is not None:
                    policies[entry.key] = stored
            elif kind == KEYS:
                parsed = self._parse_key(entry.key, entry.value)
                if parsed is not None:
                    keys[entry.key] = parsed
            elif kind == RESETS:
                resets.append(entry)
        if self._started:
            self.resyncs += 1
        self._policies = policies
        self._keys = keys
        self.revision = revision
        self._publish()
        if self._started:
            # Resets made while this gateway could not watch: not done here yet.
            for entry in resets:
                if entry.key not in self._resets_seen:
                    self._reset(entry.key, entry.value)
        # At start-up the counters are fresh: every reset so far is done.
        self._resets_seen = {entry.key for entry in resets}

    def _apply_events(self, events: list[Event], revision: int) -> None:
        policies_changed = keys_changed = False
        for event in events:
            kind, names = self.layout.kind(event.key)
            if kind == POLICIES:
                policies_changed = True
                if event.kind == "delete":
                    self._policies.pop(event.key, None)
                    continue
                stored = self._parse_policy(event.key, names, event.value, event.mod_revision)
                if stored is not None:
                    self._policies[event.key] = stored
            elif kind == KEYS:
                keys_changed = True
                parsed = None if event.kind == "delete" else self._parse_key(event.key, event.value)
                if parsed is None:
                    self._keys.pop(event.key, None)
                else:
                    self._keys[event.key] = parsed
            elif kind == RESETS:
                if event.kind == "delete":
                    self._resets_seen.discard(event.key)
                elif event.key not in self._resets_seen:
                    self._resets_seen.add(event.key)
                    self._reset(event.key, event.value)
        self.revision = max(self.revision, revision)
        if policies_changed or keys_changed:
            self._publish(keys_only=not policies_changed)

    def _publish(self, *, keys_only: bool = False) -> None:
        self.gateway.keys.set_tenant_keys(self._keys.values())
        if not keys_only:
            # The store's policies override the policy file's for the same patterns.
            merged = {(p.tenant, p.resource): p for p in self._base}
            for stored in self._policies.values():
                merged[(stored.policy.tenant, stored.policy.resource)] = stored.policy
            self.gateway.set_policies(PolicySet(merged.values(), revision=self.revision))
        else:
            self.gateway.policies.revision = self.revision
        if self._started:
            # (The start-up summary reports the first load.)
            log.info(
                "applied store revision %d: %d policies (%d from the store), %d tenant keys",
                self.revision,
                len(self.gateway.policies),
                len(self._policies),
                len(self._keys),
            )
        self.changed.set()
        self.changed = trio.Event()

    def _parse_policy(
        self, key: str, names: list[str], value: bytes, mod_revision: int
    ) -> _StoredPolicy | None:
        known = self._policies.get(key)
        if known is not None and known.mod_revision == mod_revision:
            return known
        try:
            if len(names) != 2:
                raise HeliosError(f"unexpected key {key}")
            tenant, resource = names
            policy = policy_from_document(tenant, resource, load(value, key))
        except HeliosError as error:
            # Keep what was there: one bad document must not take a limit away.
            self._count_error("invalid_document")
            log.error("ignoring the policy at %s in the store: %s", key, error.message)
            return known
        return _StoredPolicy(mod_revision, policy)

    def _parse_key(self, key: str, value: bytes) -> tuple[str, bytes] | None:
        try:
            document = load(value, key)
            return str(document["tenant"]), bytes.fromhex(str(document["sha256"]))
        except (HeliosError, KeyError, ValueError):
            self._count_error("invalid_document")
            log.error("ignoring the API key record at %s in the store: it is malformed", key)
            return None

    def _reset(self, key: str, value: bytes) -> None:
        try:
            reset = Reset.from_document(load(value, key))
        except (HeliosError, KeyError, ValueError):
            log.error("ignoring the reset at %s in the store: it is malformed", key)
            return
        self.resets_applied += 1
        if self._on_reset is not None:
            self._on_reset(reset)

    # Reporting.

    def warnings(self) -> list[str]:
        if self.state is not SyncState.STALE:
            return []
        return [
            f"policies may be stale: the store ({self.store.description}) has not answered"
            f" since revision {self.revision}"
        ]

    def statistics(self) -> SyncStatistics:
        return SyncStatistics(
            state=self.state,
            revision=self.revision,
            policies=len(self._policies),
            tenant_keys=len(self._keys),
            resyncs=self.resyncs,
            resets_applied=self.resets_applied,
            stale_since=self.stale_since,
            errors=dict(self._errors),
        )


def gateway_id() -> str:
    """A name for this gateway process, unique among live gateways."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Registration:
    """Keeps this gateway listed under ``gateways/`` while it runs (a leased entry).

    The entry says which revision the gateway has applied; it disappears when
    the gateway stops, or ``ttl_seconds`` after it dies.
    """

    def __init__(
        self,
        store: KeyValueStore,
        layout: Layout,
        info: GatewayInfo,
        sync: PolicySync,
        *,
        ttl_seconds: int = 10,
    ) -> None:
        self.store = store
        self.layout = layout
        self.info = info
        self.sync = sync
        self.ttl_seconds = ttl_seconds
        self.lease = 0
        self._written_revision = -1

    async def run(self) -> None:
        """Register, then keep the lease alive and the applied revision current."""
        interval = max(self.ttl_seconds / 3, 0.2)
        try:
            while True:
                try:
                    await self._tick()
                except BackendError as error:
                    log.debug("gateway registration failed: %s", error.message)
                    self.lease = 0
                with trio.move_on_after(interval):
                    await self.sync.changed.wait()
                    # Changes often come in bursts: write the revision once for all.
                    await trio.sleep(0.2)
        finally:
            if self.lease:
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(1.0),
                    contextlib.suppress(BackendError),
                ):
                    await self.store.revoke_lease(self.lease)

    async def _tick(self) -> None:
        if self.lease and not await self.store.keep_alive(self.lease):
            self.lease = 0
        if not self.lease:
            self.lease = await self.store.grant_lease(self.ttl_seconds)
            self._written_revision = -1
        # The revision of the policies and keys in force: not the watch's
        # position, which this very entry moves on each write.
        revision = self.sync.gateway.policies.revision
        if revision == self._written_revision:
            return
        info = GatewayInfo(
            self.info.id,
            self.info.address,
            self.info.mode,
            __version__,
            revision,
            self.info.started_at,
        )
        await self.store.commit(
            [], [Put(self.layout.gateway(info.id), dump(info.document()), lease=self.lease)]
        )
        self._written_revision = revision
