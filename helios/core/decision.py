"""Deciding a request against a policy and the bucket's current state.

A bucket's state names the serial of the policy that last charged it and
holds one state per band of that policy: for the common single-band policy,
one integer ``band_state << SERIAL_BITS | serial`` (an atom to the garbage
collector, and small); for several bands, a tuple ``(serial, band_state,
...)``. When the
policy resolved for a request has another serial (the policy changed, or a
more specific one now matches), the spent units of each old band carry over to
the matching new band before deciding. A change therefore never refills a
bucket.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from helios.core.algorithms import ALGORITHMS
from helios.core.policy import Band, Policy, policy_by_serial

BucketState = int | tuple[Any, ...]

SERIAL_BITS = 32
_SERIAL_MASK = (1 << SERIAL_BITS) - 1


def state_serial(state: BucketState) -> int:
    """The serial of the policy that wrote ``state``."""
    return state & _SERIAL_MASK if isinstance(state, int) else state[0]


def _band_states(state: BucketState) -> tuple[Any, ...]:
    if isinstance(state, int):
        return (state >> SERIAL_BITS,)
    return state[1:]


def _pack(serial: int, band_states: list[Any]) -> BucketState | None:
    if len(band_states) == 1:
        return None if band_states[0] is None else band_states[0] << SERIAL_BITS | serial
    return (serial, *band_states)


_NS_PER_MS = 1_000_000
# Each algorithm's check, by name (one lookup less per decision).
_CHECKS = {name: algorithm.check for name, algorithm in ALGORITHMS.items()}
_NS_PER_S = 1_000_000_000


# Not frozen: a frozen dataclass pays for object.__setattr__ on every field,
# and a Decision is built on every request. Treat it as immutable all the same.
@dataclass(slots=True)
class Decision:
    """The answer to one request, with every figure the API reports.

    ``allowed`` is what the caller is told; ``would_allow`` is what the limit
    itself said (they differ only for a shadow policy that would have denied).
    The figures describe the tightest band: the one that denied, or else the
    one with the fewest units left.
    """

    allowed: bool
    would_allow: bool
    policy: Policy
    band: Band
    remaining: int
    retry_after_ms: int
    retry_after_seconds: int
    reset_seconds: int
    reset_time: int
    # Where the decision was made: "fast" (memory), "strong" (Redis), "local"
    # (memory, because Redis failed), "open" (allowed, because Redis failed).
    mode: str = "fast"
    # Set when a band other than the tightest has less than a fifth of its
    # limit left (see near_limit()).
    other_band_near: bool = False

    @property
    def near_limit(self) -> bool:
        """True when some band has less than a fifth of its limit left after this decision."""
        return self.other_band_near or self.remaining * 5 < self.band.limit

    @property
    def shadow(self) -> bool:
        return self.policy.shadow

    @property
    def limit(self) -> int:
        return self.band.limit


def decide(
    policy: Policy, state: BucketState | None, now_ns: int, cost: int
) -> tuple[Decision, BucketState | None]:
    """Decide whether ``cost`` units may be spent now.

    Returns the decision and the bucket's new state; the new state is the
    state passed in (unchanged) when the request is denied or ``cost`` is 0,
    which only reads the bucket. The caller checks beforehand that ``cost``
    fits the policy's capacity (:func:`helios.core.policy.validate_cost`).
    """
    # state_serial, inlined: this runs on every decision.
    if (
        state is not None
        and (state & _SERIAL_MASK if isinstance(state, int) else state[0]) != policy.serial
    ):
        state = migrate(state, policy, now_ns)
    check = _CHECKS[policy.algorithm]
    bands = policy.bands

    if len(bands) == 1:
        band = bands[0]
        assert state is None or isinstance(state, int)
        ok, band_state, remaining, wait_ns, reset_ns = check(
            band, None if state is None else state >> SERIAL_BITS, now_ns, cost
        )
        new_state = band_state << SERIAL_BITS | policy.serial if ok and cost else state
        return _decision(policy, band, ok, remaining, wait_ns, reset_ns, now_ns), new_state

    assert state is None or isinstance(state, tuple)
    results = [
        check(band, None if state is None else state[1 + index], now_ns, cost)
        for index, band in enumerate(bands)
    ]
    decision = combine(policy, [(r[0], r[2], r[3], r[4]) for r in results], now_ns)
    if decision.would_allow and cost:
        return decision, (policy.serial, *(result[1] for result in results))
    return decision, state


def decide_run(
    policy: Policy, state: BucketState | None, now_ns: int, costs: Sequence[int]
) -> tuple[list[Decision], BucketState | None]:
    """Decide several requests on one bucket at one instant, in order.

    The same as :func:`decide` for each cost in turn, each on the state the
    one before it left; returns the decisions and the bucket's final state.
    A batch that names one pair many times in a row is decided this way, so
    that the policy's shape is looked at once rather than once per request.
    """
    if len(policy.bands) != 1:
        decisions = []
        for cost in costs:
            decision, state = decide(policy, state, now_ns, cost)
            decisions.append(decision)
        return decisions, state

    if state is not None and state_serial(state) != policy.serial:
        state = migrate(state, policy, now_ns)
    assert state is None or isinstance(state, int)
    check = _CHECKS[policy.algorithm]
    band = policy.bands[0]
    band_state: Any = None if state is None else state >> SERIAL_BITS
    charged = False
    decisions = []
    append = decisions.append
    for cost in costs:
        ok, new_band_state, remaining, wait_ns, reset_ns = check(band, band_state, now_ns, cost)
        if ok and cost:
            band_state = new_band_state
            charged = True
        append(_decision(policy, band, ok, remaining, wait_ns, reset_ns, now_ns))
    if charged:
        state = band_state << SERIAL_BITS | policy.serial
    return decisions, state


def combine(policy: Policy, results: list[tuple[bool, int, int, int]], now_ns: int) -> Decision:
    """The decision from each band's ``(allowed, remaining, wait_ns, reset_ns)``.

    Used by every backend, so that the tightest band is chosen the same way
    whether the bands were checked in memory or in Redis.
    """
    if all(result[0] for result in results):
        # Tightest band: the fewest units left; the first one on a tie.
        index = min(range(len(results)), key=lambda i: results[i][1])
        ok = True
    else:
        # The request succeeds only once every band can take it, so the wait
        # is the longest of the bands' waits, and that band is the tightest.
        index = max(range(len(results)), key=lambda i: results[i][2])
        ok = False
    _, remaining, wait_ns, reset_ns = results[index]
    decision = _decision(policy, policy.bands[index], ok, remaining, wait_ns, reset_ns, now_ns)
    # The tightest band has the fewest units left, but another may have a
    # smaller share of its limit left (10 of 1000 a day beside 9 of 10 a second).
    decision.other_band_near = any(
        result[1] * 5 < band.limit for result, band in zip(results, policy.bands, strict=True)
    )
    return decision


def _decision(
    policy: Policy,
    band: Band,
    ok: bool,
    remaining: int,
    wait_ns: int,
    reset_ns: int,
    now_ns: int,
) -> Decision:
    # Positional arguments and no work for the waits of an allowed request:
    # this runs on every decision.
    reset_seconds = -(-reset_ns // _NS_PER_S)
    reset_time = -(-(now_ns + reset_ns) // _NS_PER_S)
    if remaining < 0:
        remaining = 0
    if ok:
        return Decision(True, True, policy, band, remaining, 0, 0, reset_seconds, reset_time)
    retry_after_ms = -(-wait_ns // _NS_PER_MS)
    retry_after_seconds = max(1, -(-retry_after_ms // 1000))
    return Decision(
        policy.shadow,
        False,
        policy,
        band,
        remaining,
        retry_after_ms,
        retry_after_seconds,
        reset_seconds,
        reset_time,
    )


def is_idle(state: BucketState, now_ns: int, policy: Policy | None = None) -> bool:
    """True when the bucket holds no information and may be dropped.

    ``policy`` is the policy that wrote the state, when the caller has it.
    """
    if policy is None:
        policy = policy_by_serial(state_serial(state))
    idle = ALGORITHMS[policy.algorithm].idle
    return all(map(idle, policy.bands, _band_states(state), [now_ns] * len(policy.bands)))


def migrate(state: BucketState, policy: Policy, now_ns: int) -> BucketState | None:
    """Carry a bucket's spent units from the policy that wrote it to ``policy``.

    Each new band takes over the state of the old band with the same window
    (exactly, when the algorithm is also the same), or else the spent units of
    the old band whose window is nearest. Spent units are rounded up, so a
    change never hands out more than the old state allowed.
    """
    old = policy_by_serial(state_serial(state))
    old_states = _band_states(state)
    old_algorithm = ALGORITHMS[old.algorithm]
    new_algorithm = ALGORITHMS[policy.algorithm]
    band_states: list[Any] = []
    for band in policy.bands:
        index = min(
            range(len(old.bands)),
            key=lambda i: (
                old.bands[i].calendar != band.calendar,
                abs(old.bands[i].window_ns - band.window_ns),
            ),
        )
        old_band, old_state = old.bands[index], old_states[index]
        if _same_shape(old, old_band, policy, band):
            band_states.append(old_state)
            continue
        units = old_algorithm.spent(old_band, old_state, now_ns)
        band_states.append(new_algorithm.from_spent(band, units, now_ns))
    if all(band_state is None for band_state in band_states):
        return None
    return _pack(policy.serial, band_states)


def _same_shape(old: Policy, old_band: Band, new: Policy, band: Band) -> bool:
    """True when the old band's state means the same under the new band."""
    if old.algorithm != new.algorithm:
        return False
    if old_band.window_ns != band.window_ns or old_band.calendar != band.calendar:
        return False
    # A token bucket's state is scaled by its limit (see algorithms.py).
    return new.algorithm != "token_bucket" or old_band.limit == band.limit


@dataclass(frozen=True, slots=True)
class BandQuota:
    band: Band
    remaining: int
    reset_seconds: int


def inspect(policy: Policy, state: BucketState | None, now_ns: int) -> list[BandQuota]:
    """Every band's current figures, charging nothing."""
    if state is not None and state_serial(state) != policy.serial:
        state = migrate(state, policy, now_ns)
    check = ALGORITHMS[policy.algorithm].check
    band_states = (None,) * len(policy.bands) if state is None else _band_states(state)
    quotas = []
    for band, band_state in zip(policy.bands, band_states, strict=True):
        _, _, remaining, _, reset_ns = check(band, band_state, now_ns, 0)
        quotas.append(BandQuota(band, max(0, remaining), -(-reset_ns // _NS_PER_S)))
    return quotas
