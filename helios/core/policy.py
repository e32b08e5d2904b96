"""Policies, their bands, and how a (tenant, resource) pair finds its policy.

A policy names a tenant and a resource, either of which may end in ``*`` (a
prefix pattern). Resolution picks the most specific policy: an exact tenant
beats a tenant pattern, a longer tenant prefix beats a shorter one; within the
chosen tenant entry, an exact resource beats a longer resource prefix, which
beats a shorter one. If the most specific tenant entry has no resource that
matches, resolution falls back to the next tenant entry.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from helios.core.windows import format_window, parse_window, shown
from helios.errors import InvalidRequest, PolicyError

ALGORITHMS = ("token_bucket", "fixed_window", "sliding_window")
FAILURE_MODES = ("open", "closed", "local")

# The largest limit or burst a band may have. Counts stay exact integers in
# Redis and in floats well below 2**53 even after many windows.
MAX_LIMIT = 1_000_000_000_000

_serials = itertools.count(1)
# Every live policy by serial. Weak: whoever keeps bucket states keeps the
# policies that wrote them alive (see BucketTable).
_by_serial: weakref.WeakValueDictionary[int, Policy] = weakref.WeakValueDictionary()


def policy_by_serial(serial: int) -> Policy:
    """The policy with this serial; it must still be alive."""
    return _by_serial[serial]


_POLICY_KEYS = frozenset(
    {
        "tenant",
        "resource",
        "algorithm",
        "limit",
        "window",
        "burst",
        "calendar",
        "bands",
        "shadow",
        "failure_mode",
        "description",
    }
)
_BAND_KEYS = frozenset({"limit", "window", "burst", "calendar"})


@dataclass(frozen=True, slots=True)
class Band:
    """One limit of a policy: ``limit`` units per ``window_seconds``."""

    limit: int
    window_seconds: float
    # Capacity of a token bucket (defaults to ``limit``); equal to ``limit``
    # for window algorithms.
    burst: int
    # "day", "week", "month" or "year" for a calendar-aligned fixed window.
    calendar: str | None = None
    # The window in integer nanoseconds: all decision arithmetic is on integers,
    # so results are exact however long the process runs.
    window_ns: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "window_ns", round(self.window_seconds * 1e9))

    @property
    def capacity(self) -> int:
        """The largest cost this band can ever admit at once."""
        return self.burst

    def describe(self) -> str:
        window = self.calendar or format_window(self.window_seconds)
        return f"{self.limit}/{window}"


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class Policy:
    """A rate limit for the (tenant, resource) pairs its patterns match.

    Policies compare by identity. Each has a process-unique ``serial``: a
    bucket's state records the serial of the policy that last charged it
    (an int rather than the object, so that a million bucket states hold no
    references for the garbage collector to walk), and a different serial
    means the policy changed.
    """

    tenant: str
    resource: str
    algorithm: str
    bands: tuple[Band, ...]
    shadow: bool = False
    failure_mode: str = "local"
    description: str = ""

    # Derived once: both are read on every decision.
    name: str = field(init=False)
    # The largest cost every band can take at once.
    capacity: int = field(init=False)
    serial: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", f"{self.tenant}/{self.resource}")
        object.__setattr__(self, "capacity", min(band.capacity for band in self.bands))
        serial = next(_serials)
        object.__setattr__(self, "serial", serial)
        _by_serial[serial] = self

    def to_dict(self) -> dict[str, object]:
        """The policy in the JSON shape of the API (tenant and resource included)."""
        bands: list[dict[str, object]] = []
        for band in self.bands:
            entry: dict[str, object] = {
                "limit": band.limit,
                "window": band.calendar or format_window(band.window_seconds),
            }
            if band.calendar:
                entry["calendar"] = True
            if self.algorithm == "token_bucket":
                entry["burst"] = band.burst
            bands.append(entry)
        result: dict[str, object] = {
            "tenant": self.tenant,
            "resource": self.resource,
            "algorithm": self.algorithm,
            "bands": bands,
            "shadow": self.shadow,
            "failure_mode": self.failure_mode,
        }
        if self.description:
            result["description"] = self.description
        return result


def parse_policy(data: Mapping[str, object], *, where: str = "policy") -> Policy:
    """Build a :class:`Policy` from its document form (TOML table or JSON object).

    Errors name the offending field, prefixed with ``where`` (for instance
    ``policies[2]``) so that a file with many policies points at the right one.
    """
    unknown = sorted(set(data) - _POLICY_KEYS)
    if unknown:
        raise PolicyError(f"{where}.{unknown[0]}: unknown field", field=unknown[0])

    tenant = check_pattern(data.get("tenant"), f"{where}.tenant")
    resource = check_pattern(data.get("resource"), f"{where}.resource")
    algorithm = data.get("algorithm", "token_bucket")
    if algorithm not in ALGORITHMS:
        raise PolicyError(
            f"{where}.algorithm must be one of {', '.join(ALGORITHMS)}, got {shown(algorithm)}",
            field="algorithm",
        )
    assert isinstance(algorithm, str)

    single = {key: data[key] for key in ("limit", "window", "burst", "calendar") if key in data}
    raw_bands = data.get("bands")
    if raw_bands is not None and single:
        raise PolicyError(
            f"{where}: give either bands or limit/window/burst, not both", field="bands"
        )
    if raw_bands is None:
        if not single:
            raise PolicyError(f"{where}.limit is required", field="limit")
        raw_bands = [single]
    if not isinstance(raw_bands, list) or not raw_bands:
        raise PolicyError(f"{where}.bands must be a non-empty list", field="bands")
    if len(raw_bands) > 8:
        raise PolicyError(f"{where}.bands may hold at most 8 bands", field="bands")
    bands = tuple(
        _band(raw, algorithm, f"{where}.bands[{index}]" if "bands" in data else where)
        for index, raw in enumerate(raw_bands)
    )

    shadow = data.get("shadow", False)
    if not isinstance(shadow, bool):
        raise PolicyError(
            f"{where}.shadow must be true or false, got {shown(shadow)}", field="shadow"
        )
    failure_mode = data.get("failure_mode", "local")
    if failure_mode not in FAILURE_MODES:
        raise PolicyError(
            f"{where}.failure_mode must be one of {', '.join(FAILURE_MODES)},"
            f" got {shown(failure_mode)}",
            field="failure_mode",
        )
    assert isinstance(failure_mode, str)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise PolicyError(
            f"{where}.description must be a string, got {shown(description)}",
            field="description",
        )
    return Policy(tenant, resource, algorithm, bands, shadow, failure_mode, description)


def check_pattern(value: object, field: str) -> str:
    name = field.rsplit(".", 1)[-1]
    if value is None or value == "":
        raise PolicyError(f"{field} is required (a name, or a prefix ending in '*')", field=name)
    if not isinstance(value, str):
        raise PolicyError(f"{field} must be a string, got {shown(value)}", field=name)
    if "*" in value[:-1]:
        raise PolicyError(f"{field} may hold '*' only at its end, got {shown(value)}", field=name)
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise PolicyError(f"{field} must not contain control characters", field=name)
    return value


def _band(raw: object, algorithm: str, where: str) -> Band:
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where} must be a table with limit and window", field="bands")
    unknown = sorted(set(raw) - _BAND_KEYS)
    if unknown:
        raise PolicyError(f"{where}.{unknown[0]}: unknown field", field=unknown[0])

    limit = _count(raw.get("limit"), f"{where}.limit", "limit")
    calendar = raw.get("calendar", False)
    if not isinstance(calendar, bool):
        raise PolicyError(
            f"{where}.calendar must be true or false, got {shown(calendar)}", field="calendar"
        )
    if calendar and algorithm != "fixed_window":
        raise PolicyError(
            f"{where}.calendar needs algorithm fixed_window, not {algorithm}",
            field="calendar",
        )
    if "window" not in raw:
        raise PolicyError(f"{where}.window is required", field="window")
    seconds, unit = parse_window(raw["window"], calendar=calendar, field=f"{where}.window")

    burst = limit
    if raw.get("burst") is not None:
        if algorithm != "token_bucket":
            raise PolicyError(
                f"{where}.burst applies only to token_bucket, not {algorithm}", field="burst"
            )
        burst = _count(raw["burst"], f"{where}.burst", "burst")
    return Band(limit, seconds, burst, unit)


def _count(value: object, field: str, name: str) -> int:
    if value is None:
        raise PolicyError(f"{field} is required", field=name)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise PolicyError(
            f"{field} must be an integer from 1 to {MAX_LIMIT}, got {shown(value)}", field=name
        )
    return value


class _PatternIndex:
    """Exact names and prefix patterns, looked up most specific first.

    A prefix lookup tries each distinct prefix length present, longest first,
    so its cost grows with the number of distinct lengths, not of patterns.
    """

    __slots__ = ("exact", "lengths", "prefixes")

    def __init__(self) -> None:
        self.exact: dict[str, object] = {}
        self.prefixes: dict[str, object] = {}
        self.lengths: list[int] = []

    def add(self, pattern: str, value: object) -> None:
        if pattern.endswith("*"):
            prefix = pattern[:-1]
            self.prefixes[prefix] = value
            if len(prefix) not in self.lengths:
                self.lengths.append(len(prefix))
                self.lengths.sort(reverse=True)
        else:
            self.exact[pattern] = value

    def get(self, pattern: str) -> object | None:
        if pattern.endswith("*"):
            return self.prefixes.get(pattern[:-1])
        return self.exact.get(pattern)

    def matches(self, name: str) -> list[object]:
        """Entries matching ``name``, most specific first."""
        hits = []
        hit = self.exact.get(name)
        if hit is not None:
            hits.append(hit)
        for length in self.lengths:
            if length <= len(name):
                hit = self.prefixes.get(name[:length])
                if hit is not None:
                    hits.append(hit)
        return hits

    def first(self, name: str) -> object | None:
        """The most specific entry matching ``name``."""
        hit = self.exact.get(name)
        if hit is not None:
            return hit
        for length in self.lengths:
            if length <= len(name):
                hit = self.prefixes.get(name[:length])
                if hit is not None:
                    return hit
        return None


_RESOLVE_CACHE_SIZE = 65_536


class PolicySet:
    """An immutable collection of policies with most-specific-first lookup."""

    def __init__(self, policies: Iterable[Policy] = (), *, revision: int = 0) -> None:
        self.revision = revision
        self._tenants = _PatternIndex()
        self._policies: list[Policy] = []
        # Pairs resolved so far. A set is immutable, so entries never go stale;
        # the cache is emptied when full to keep memory bounded.
        self._resolved: dict[tuple[str, str], Policy | None] = {}
        for policy in policies:
            resources = self._tenants.get(policy.tenant)
            if resources is None:
                resources = _PatternIndex()
                self._tenants.add(policy.tenant, resources)
            assert isinstance(resources, _PatternIndex)
            if resources.get(policy.resource) is not None:
                raise PolicyError(f"duplicate policy for {policy.name}", field="resource")
            resources.add(policy.resource, policy)
            self._policies.append(policy)

    def __len__(self) -> int:
        return len(self._policies)

    def __iter__(self) -> Iterator[Policy]:
        return iter(self._policies)

    def resolve(self, tenant: str, resource: str) -> Policy | None:
        """The most specific policy for this pair, or ``None``."""
        pair = (tenant, resource)
        try:
            return self._resolved[pair]
        except KeyError:
            pass
        if len(self._resolved) >= _RESOLVE_CACHE_SIZE:
            self._resolved.clear()
        policy = self._resolved[pair] = self._resolve(tenant, resource)
        return policy

    def _resolve(self, tenant: str, resource: str) -> Policy | None:
        for resources in self._tenants.matches(tenant):
            policy = resources.first(resource)  # type: ignore[attr-defined]
            if policy is not None:
                assert isinstance(policy, Policy)
                return policy
        return None

    def find(self, tenant: str, resource: str) -> Policy | None:
        """The policy defined for exactly these patterns, or ``None``."""
        resources = self._tenants.get(tenant)
        if resources is None:
            return None
        assert isinstance(resources, _PatternIndex)
        policy = resources.get(resource)
        assert policy is None or isinstance(policy, Policy)
        return policy


def validate_cost(policy: Policy, cost: int) -> None:
    """Reject a cost that no band of the policy could ever admit."""
    if cost <= policy.capacity:
        return
    band = min(policy.bands, key=lambda b: b.capacity)
    raise InvalidRequest(
        f"cost {cost} exceeds the capacity {band.capacity} of band {band.describe()}"
        f" of policy {policy.name}; such a request can never be allowed",
        field="cost",
    )
