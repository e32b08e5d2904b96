"""The three rate-limiting algorithms, as pure functions on band state.

All arithmetic is on integers (time in nanoseconds since the Unix epoch), so
every result is exact: no rounding drift, however long a bucket lives.

Every algorithm offers the same five operations on the state of one band:

``check(band, state, now_ns, cost)``
    returns ``(allowed, new_state, remaining, wait_ns, reset_ns)``: whether the
    band can take ``cost`` now, its state after charging (the old state when
    denied), the whole units left (after the charge when allowed, as they are
    when denied), how long until the same cost could be taken (0 when allowed),
    and how long until the band is back to full (token bucket) or its window
    ends (windows). ``cost == 0`` reads the state without changing it.
``idle(band, state, now_ns)``
    true when the state holds no information: a fresh state would decide the
    same from now on, so the bucket can be dropped.
``spent(band, state, now_ns)`` / ``from_spent(band, units, now_ns)``
    the units currently spent, and a state with that many spent; used to carry
    counters across a policy change.

``None`` is the fresh state of every algorithm; every other state is one
non-negative integer. Integers are atoms to the garbage collector and smaller
than tuples, which matters with a million buckets in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from helios.core.policy import Band
from helios.core.windows import window_bounds

State = Any  # None or an int; see each algorithm for its layout
CheckResult = tuple[bool, State, int, int, int]

_NS = 1_000_000_000


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# Token bucket, as the generic cell rate algorithm (GCRA).
#
# The state is one integer: the "theoretical arrival time" (TAT), the moment
# at which the bucket will be full again. To keep everything integral, time is
# scaled by the band's limit: a scaled time of `limit * t_ns` stands for
# `t_ns`, so one unit's emission interval `window_ns / limit` becomes exactly
# `window_ns` scaled units, and the capacity `burst` units becomes
# `burst * window_ns`.


def _tb_check(band: Band, tat: int | None, now_ns: int, cost: int) -> CheckResult:
    interval = band.window_ns
    capacity = band.burst * interval
    now = now_ns * band.limit
    base = now if tat is None or tat < now else tat
    new_tat = base + cost * interval
    # Scaled time until the bucket is full again, once charged.
    refill = new_tat - now
    if refill <= capacity:
        remaining = (capacity - refill) // interval
        # _ceil_div inlined: this branch runs on almost every decision.
        reset_ns = -(-refill // band.limit)
        return True, (new_tat if cost else tat), remaining, 0, reset_ns
    remaining = (capacity - (base - now)) // interval
    wait_ns = _ceil_div(new_tat - capacity - now, band.limit)
    reset_ns = _ceil_div(base - now, band.limit)
    return False, tat, remaining, wait_ns, reset_ns


def _tb_idle(band: Band, tat: int | None, now_ns: int) -> bool:
    return tat is None or tat <= now_ns * band.limit


def _tb_spent(band: Band, tat: int | None, now_ns: int) -> int:
    if tat is None:
        return 0
    return max(0, _ceil_div(tat - now_ns * band.limit, band.window_ns))


def _tb_from_spent(band: Band, units: int, now_ns: int) -> int | None:
    return now_ns * band.limit + units * band.window_ns if units > 0 else None


# Fixed window: the state packs (window start in ns, units spent in it) as
# `start << COUNT_BITS | count`.

# Counts never exceed a band's limit, at most MAX_LIMIT (10**12 < 2**41).
COUNT_BITS = 41
_COUNT_MASK = (1 << COUNT_BITS) - 1


def _bounds(band: Band, now_ns: int) -> tuple[int, int]:
    if band.calendar is None:
        start = now_ns - now_ns % band.window_ns
        return start, start + band.window_ns
    return _calendar_bounds(band.calendar, now_ns)


_calendar_cache: dict[str, tuple[int, int]] = {}


def _calendar_bounds(unit: str, now_ns: int) -> tuple[int, int]:
    # Calendar arithmetic is slow; the current window is cached per unit.
    cached = _calendar_cache.get(unit)
    if cached is not None and cached[0] <= now_ns < cached[1]:
        return cached
    # Whole seconds: calendar boundaries fall on whole seconds, and a float
    # would round a time just before midnight up to the next day.
    start, end = window_bounds(now_ns // _NS, 0.0, unit)
    bounds = (round(start) * _NS, round(end) * _NS)
    _calendar_cache[unit] = bounds
    return bounds


def _fw_check(band: Band, state: int | None, now_ns: int, cost: int) -> CheckResult:
    start, end = _bounds(band, now_ns)
    count = state & _COUNT_MASK if state is not None and state >> COUNT_BITS == start else 0
    if count + cost <= band.limit:
        new_state = (start << COUNT_BITS | (count + cost)) if cost else state
        return True, new_state, band.limit - count - cost, 0, end - now_ns
    return False, state, max(0, band.limit - count), end - now_ns, end - now_ns


def _fw_idle(band: Band, state: int | None, now_ns: int) -> bool:
    return state is None or state >> COUNT_BITS != _bounds(band, now_ns)[0]


def _fw_spent(band: Band, state: int | None, now_ns: int) -> int:
    if state is None or state >> COUNT_BITS != _bounds(band, now_ns)[0]:
        return 0
    return state & _COUNT_MASK


def _fw_from_spent(band: Band, units: int, now_ns: int) -> int | None:
    units = min(units, _COUNT_MASK)
    return _bounds(band, now_ns)[0] << COUNT_BITS | units if units > 0 else None


# Sliding window: the state packs (current window start, previous count,
# current count) as `start << 2·COUNT_BITS | previous << COUNT_BITS | current`.
# The estimate is previous × (1 − elapsed / window) + current; every
# comparison is multiplied through by the window length to stay integral.


def _sw_pack(start: int, previous: int, current: int) -> int:
    return start << (2 * COUNT_BITS) | previous << COUNT_BITS | current


def _sw_counts(band: Band, state: int | None, start: int) -> tuple[int, int]:
    if state is None:
        return 0, 0
    state_start = state >> (2 * COUNT_BITS)
    if state_start == start:
        return (state >> COUNT_BITS) & _COUNT_MASK, state & _COUNT_MASK
    if state_start == start - band.window_ns:
        return state & _COUNT_MASK, 0
    return 0, 0


def _sw_check(band: Band, state: int | None, now_ns: int, cost: int) -> CheckResult:
    window = band.window_ns
    start = now_ns - now_ns % window
    elapsed = now_ns - start
    previous, current = _sw_counts(band, state, start)
    # Everything below is in units × window_ns.
    used = previous * (window - elapsed) + current * window
    budget = band.limit * window
    reset_ns = start + window - now_ns
    if used + cost * window <= budget:
        remaining = (budget - used - cost * window) // window
        new_state = _sw_pack(start, previous, current + cost) if cost else state
        return True, new_state, remaining, 0, reset_ns
    remaining = max(0, (budget - used) // window)
    return False, state, remaining, _sw_wait(band, previous, current, elapsed, cost), reset_ns


def _sw_wait(band: Band, previous: int, current: int, elapsed: int, cost: int) -> int:
    """Time until ``cost`` fits, if nobody else spends."""
    window = band.window_ns
    room = band.limit - current - cost
    if room >= 0:
        # Within this window, once the previous window's weight has decayed
        # enough: previous × (window − e) ≤ room × window.
        needed = window - (room * window) // previous
        return max(0, needed - elapsed)
    # Only in the next window, where this window's count becomes "previous".
    room = band.limit - cost
    needed = 0 if current <= room else window - (room * window) // current
    return window - elapsed + needed


def _sw_idle(band: Band, state: int | None, now_ns: int) -> bool:
    return state is None or (state >> (2 * COUNT_BITS)) + 2 * band.window_ns <= now_ns


def _sw_spent(band: Band, state: int | None, now_ns: int) -> int:
    start = now_ns - now_ns % band.window_ns
    previous, current = _sw_counts(band, state, start)
    elapsed = now_ns - start
    return _ceil_div(previous * (band.window_ns - elapsed), band.window_ns) + current


def _sw_from_spent(band: Band, units: int, now_ns: int) -> int | None:
    units = min(units, _COUNT_MASK)
    return _sw_pack(now_ns - now_ns % band.window_ns, 0, units) if units > 0 else None


class Algorithm(NamedTuple):
    name: str
    check: Callable[[Band, Any, int, int], CheckResult]
    idle: Callable[[Band, Any, int], bool]
    spent: Callable[[Band, Any, int], int]
    from_spent: Callable[[Band, int, int], Any]


ALGORITHMS: dict[str, Algorithm] = {
    "token_bucket": Algorithm("token_bucket", _tb_check, _tb_idle, _tb_spent, _tb_from_spent),
    "fixed_window": Algorithm("fixed_window", _fw_check, _fw_idle, _fw_spent, _fw_from_spent),
    "sliding_window": Algorithm("sliding_window", _sw_check, _sw_idle, _sw_spent, _sw_from_spent),
}
