"""Decisions by tenant for the tenant-labelled metrics, in bounded memory.

How it works. Every decision bumps one integer in the entry of its tenant.
The table holds at most ``capacity`` entries; a decision for a tenant not in
it adds an entry, and when the table is full, the half of the tenants with the
fewest decisions since the last scrape are folded into ``other`` first (the
tenants exported by name are kept). Folding sorts the table, but happens once
per ``capacity / 2`` new tenants: a flood of distinct tenants costs a few
microseconds per new tenant, and memory stays bounded.

At each scrape (:meth:`TenantCounts.snapshot`), the ``max_tenants`` tenants
with the most decisions since the previous scrape are exported by name and
every other tenant is folded into ``other``. Each decision is exported in
exactly one series, once, so the sum of the series' increases equals the
decisions made:

* a tenant's series only grows while it is exported; when the tenant leaves
  the top, its series disappears and its decisions since the last scrape go
  to ``other``;
* a tenant entering the top starts its series at zero, and what it decided
  before goes to ``other``: a new series' first value is invisible to
  ``rate()``, so it must be zero;
* ``other`` only grows.

A tenant that drops out and comes back gets a new series from zero, which
Prometheus treats as a counter reset. A tenant that is itself named ``other``
is never exported by name: its decisions are always in ``other``, so that no
two series share their labels.
"""

from __future__ import annotations

# Indexes of an entry: decisions by result, then the same figures as the last
# scrape exported them (zero for a tenant not exported by name).
ALLOWED, DENIED, SHADOW_DENIED = 0, 1, 2
RESULTS = ("allowed", "denied", "shadow_denied")
_EXPORTED = 3

# The tenant label of the series that sums every tenant not exported by name.
OTHER = "other"

# Entries kept per tenant exported by name: room for newcomers between scrapes.
CAPACITY_PER_TENANT = 10


class TenantCounts:
    """Decisions by tenant and result; the busiest ``max_tenants`` by name, the rest summed."""

    def __init__(self, max_tenants: int, *, capacity: int | None = None) -> None:
        if max_tenants < 1:
            raise ValueError(f"max_tenants must be at least 1, got {max_tenants}")
        self.max_tenants = max_tenants
        self.capacity = max(capacity or CAPACITY_PER_TENANT * max_tenants, 2 * max_tenants)
        # tenant -> [allowed, denied, shadow_denied, and the three as last exported].
        self.entries: dict[str, list[int]] = {}
        # Decisions of tenants not exported by name, by result; only grows.
        self.other = [0, 0, 0]
        # Tenants exported by name at the last scrape; never folded between scrapes.
        self._exported: set[str] = set()
        self.folds = 0

    def count(self, tenant: str, result: int) -> None:
        """Count one decision; ``result`` is ALLOWED, DENIED or SHADOW_DENIED."""
        entry = self.entries.get(tenant)
        if entry is None:
            entry = self._admit(tenant)
        entry[result] += 1

    def _admit(self, tenant: str) -> list[int]:
        if len(self.entries) >= self.capacity:
            self._fold_quietest(len(self.entries) // 2)
        entry = self.entries[tenant] = [0, 0, 0, 0, 0, 0]
        return entry

    def _fold_quietest(self, count: int) -> None:
        """Fold the ``count`` tenants with the fewest recent decisions into ``other``."""
        exported = self._exported
        candidates = [item for item in self.entries.items() if item[0] not in exported]
        candidates.sort(key=_recent)
        for tenant, entry in candidates[:count]:
            self._fold(tenant, entry)
        self.folds += 1

    def _fold(self, tenant: str, entry: list[int]) -> None:
        # Only what no series has shown yet: the last scrape exported the rest.
        other = self.other
        for result in (ALLOWED, DENIED, SHADOW_DENIED):
            other[result] += entry[result] - entry[_EXPORTED + result]
        del self.entries[tenant]

    def snapshot(self) -> tuple[list[tuple[str, list[int]]], list[int]]:
        """The series to export now: ``[(tenant, [allowed, denied, shadow_denied])]``, and other.

        Picks the busiest tenants since the previous snapshot (those exported
        then win ties) and folds the rest; see the module's docstring.
        """
        exported = self._exported
        named = self.entries.get(OTHER)
        if named is not None:
            self._fold(OTHER, named)
        ranked = sorted(
            self.entries.items(),
            key=lambda item: (_recent(item), item[0] in exported),
            reverse=True,
        )
        top = ranked[: self.max_tenants]
        for tenant, entry in ranked[self.max_tenants :]:
            self._fold(tenant, entry)
        for tenant, entry in top:
            if tenant not in exported:
                # A new series starts at zero; what came before is other's.
                self._fold(tenant, entry)
                entry = self.entries[tenant] = [0, 0, 0, 0, 0, 0]
            entry[_EXPORTED:] = entry[:_EXPORTED]
        self._exported = {tenant for tenant, _ in top}
        series = sorted((tenant, self.entries[tenant][:_EXPORTED]) for tenant, _ in top)
        return series, list(self.other)


def _recent(item: tuple[str, list[int]]) -> int:
    """Decisions of an entry since the last scrape."""
    entry = item[1]
    return entry[0] + entry[1] + entry[2] - entry[3] - entry[4] - entry[5]
