"""The FAST backend: bucket state in an in-memory, sharded table.

Each decision is one dict lookup and one store: O(1) whatever the number of
keys. The table never holds more than ``max_buckets`` buckets. Memory is freed
only by dropping buckets that hold no information (refilled to full, or whose
window has passed): a throttled key therefore can never come back with a
fresh bucket. When the table is full of buckets that still matter, a new key
is refused with :class:`~helios.errors.CapacityExhausted` and counted; the
sweeper frees room as buckets go idle.

The table is sharded so that the sweeper can do a bounded amount of work per
tick (one shard at a time, a few hundred entries at most) and never stall the
event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from helios.core.decision import (
    BandQuota,
    BucketState,
    Decision,
    decide,
    decide_run,
    inspect,
    is_idle,
    state_serial,
)
from helios.core.names import bucket_key
from helios.core.policy import Policy
from helios.errors import CapacityExhausted

# Entries per shard the table aims for when it is full: sweeping one shard
# then takes well under a millisecond.
_TARGET_SHARD_SIZE = 512


@dataclass(frozen=True, slots=True)
class TableStatistics:
    buckets: int
    max_buckets: int
    shards: int
    evictions: int
    refusals: int
    sweeps: int


class BucketTable:
    """Sharded bucket state for every (tenant, resource) pair in use."""

    def __init__(self, max_buckets: int) -> None:
        if max_buckets < 1:
            raise ValueError("max_buckets must be at least 1")
        shards = 16
        while shards * _TARGET_SHARD_SIZE < max_buckets:
            shards *= 2
        self.max_buckets = max_buckets
        self._shards: list[dict[bytes, BucketState]] = [{} for _ in range(shards)]
        self._mask = shards - 1
        self._size = 0
        self._cursor = 0
        self.evictions = 0
        self.refusals = 0
        self.sweeps = 0
        # Bucket states name the policy that wrote them by serial; these keep
        # those policies alive (see helios.core.policy). Each sweep pass moves
        # the policies still named by some state from `_previous` to
        # `_writers`; at the end of the pass, the rest are let go.
        self._writers: dict[int, Policy] = {}
        self._previous: dict[int, Policy] = {}

    def __len__(self) -> int:
        return self._size

    def decide(
        self, policy: Policy, tenant: str, resource: str, now_ns: int, cost: int
    ) -> Decision:
        """Decide one request and store the bucket's new state."""
        return self.decide_key(policy, bucket_key(tenant, resource), now_ns, cost)

    def decide_key(self, policy: Policy, key: bytes, now_ns: int, cost: int) -> Decision:
        """Like :meth:`decide`, for the pair whose :func:`bucket_key` is ``key``.

        A batch that names one pair many times encodes its key once.
        """
        shard = self._shards[hash(key) & self._mask]
        state = shard.get(key)
        if state is None and self._size >= self.max_buckets and not self._free(shard, now_ns):
            raise self._refusal(1)
        decision, new_state = decide(policy, state, now_ns, cost)
        if new_state is not state:
            self._store(shard, key, policy, state, new_state)
        return decision

    def decide_run(
        self, policy: Policy, key: bytes, now_ns: int, costs: Sequence[int]
    ) -> list[Decision]:
        """Like :meth:`decide_key` for each cost in turn, with one lookup and one store.

        If the table is full and the key is new, each of the requests is
        refused (and counted) as :meth:`decide_key` would refuse it.
        """
        shard = self._shards[hash(key) & self._mask]
        state = shard.get(key)
        if state is None and self._size >= self.max_buckets and not self._free(shard, now_ns):
            raise self._refusal(len(costs))
        decisions, new_state = decide_run(policy, state, now_ns, costs)
        if new_state is not state:
            self._store(shard, key, policy, state, new_state)
        return decisions

    def _refusal(self, requests: int) -> CapacityExhausted:
        """Count ``requests`` refused for a new key in a full table; the error to raise."""
        self.refusals += requests
        return CapacityExhausted(
            f"the bucket table is full ({self.max_buckets} buckets that still"
            " hold counts); new keys are refused until some refill"
        )

    def _store(
        self,
        shard: dict[bytes, BucketState],
        key: bytes,
        policy: Policy,
        state: BucketState | None,
        new_state: BucketState | None,
    ) -> None:
        """Put a bucket's new state in place of ``state`` (None: the bucket is fresh)."""
        if new_state is None:
            if state is not None:
                del shard[key]
                self._size -= 1
            return
        if state is None:
            self._size += 1
        shard[key] = new_state
        self._writers[policy.serial] = policy

    def peek(
        self, policy: Policy, tenant: str, resource: str, now_ns: int
    ) -> tuple[Decision, list[BandQuota]]:
        """The bucket's current figures, charging nothing: the tightest band, and each band."""
        key = bucket_key(tenant, resource)
        state = self._shards[hash(key) & self._mask].get(key)
        return decide(policy, state, now_ns, 0)[0], inspect(policy, state, now_ns)

    def sweep(self, now_ns: int, budget: int = 1024) -> int:
        """Drop idle buckets, visiting whole shards up to about ``budget`` entries.

        Returns the number of buckets dropped. Successive calls walk the
        shards round-robin, so every bucket is looked at once per pass.
        """
        dropped = 0
        visited = 0
        for _ in range(len(self._shards)):
            if visited >= budget:
                break
            if self._cursor == 0:
                self._previous, self._writers = self._writers, {}
            shard = self._shards[self._cursor]
            self._cursor = (self._cursor + 1) & self._mask
            # An empty shard costs a visit too, or a large, sparse table
            # would be walked whole on every tick.
            visited += len(shard) or 1
            idle = []
            for key, state in shard.items():
                policy = self._writer(state_serial(state))
                if is_idle(state, now_ns, policy):
                    idle.append(key)
            for key in idle:
                del shard[key]
            dropped += len(idle)
        self._size -= dropped
        self.evictions += dropped
        self.sweeps += 1
        return dropped

    def _free(self, shard: dict[bytes, BucketState], now_ns: int) -> bool:
        """Drop the idle buckets of one shard now; True if any went.

        Bounded work (one shard), so a full table can admit a new key as soon
        as its own shard holds an idle bucket, without waiting for the sweeper.
        """
        idle = [key for key, state in shard.items() if is_idle(state, now_ns)]
        for key in idle:
            del shard[key]
        self._size -= len(idle)
        self.evictions += len(idle)
        return bool(idle)

    def _writer(self, serial: int) -> Policy:
        policy = self._writers.get(serial)
        if policy is None:
            policy = self._writers[serial] = self._previous[serial]
        return policy

    def reset(self, tenant: str, resource: str | None = None) -> int:
        """Forget the counters of a tenant (all its resources, or one)."""
        if resource is not None:
            key = bucket_key(tenant, resource)
            shard = self._shards[hash(key) & self._mask]
            if shard.pop(key, None) is None:
                return 0
            self._size -= 1
            return 1
        prefix = f"{len(tenant)}:{tenant}".encode("utf-8", "surrogatepass")
        dropped = 0
        for shard in self._shards:
            doomed = [key for key in shard if key.startswith(prefix)]
            for key in doomed:
                del shard[key]
            dropped += len(doomed)
        self._size -= dropped
        return dropped

    def statistics(self) -> TableStatistics:
        return TableStatistics(
            buckets=self._size,
            max_buckets=self.max_buckets,
            shards=len(self._shards),
            evictions=self.evictions,
            refusals=self.refusals,
            sweeps=self.sweeps,
        )
