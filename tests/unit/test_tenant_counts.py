"""Decisions by tenant (TenantCounts): bounded memory, the top tenants, exact sums."""

from __future__ import annotations

import tracemalloc

from hypothesis import given
from hypothesis import strategies as st

from helios.gateway.tenants import ALLOWED, DENIED, OTHER, SHADOW_DENIED, TenantCounts

from .support import PROPERTY

Series = dict[str, list[int]]


class Scraper:
    """What Prometheus makes of successive snapshots: the increase of each series.

    A series seen for the first time contributes nothing (``rate()`` needs two
    samples), so new series must start at zero for the sums to be exact.
    """

    def __init__(self, counts: TenantCounts) -> None:
        self.counts = counts
        self.last: Series = {}
        self.increase = [0, 0, 0]
        self.seen: list[Series] = []

    def scrape(self) -> Series:
        tenants, other = self.counts.snapshot()
        current: Series = {tenant: values for tenant, values in tenants}
        # One series per label set: no tenant is exported by the overflow's name.
        assert len(current) == len(tenants) and OTHER not in current, tenants
        current[OTHER] = other
        for name, values in current.items():
            previous = self.last.get(name)
            if previous is None:
                continue
            for result in range(3):
                assert values[result] >= previous[result], (name, previous, values)
                self.increase[result] += values[result] - previous[result]
        self.last = current
        self.seen.append(current)
        return current


def test_the_busiest_tenants_are_exported_by_name_and_the_rest_summed() -> None:
    counts = TenantCounts(3)
    scraper = Scraper(counts)
    assert scraper.scrape() == {"other": [0, 0, 0]}
    # Tenant i makes i decisions: 10, 9 and 8 are the busiest three.
    for index in range(1, 11):
        for _ in range(index):
            counts.count(f"t{index}", ALLOWED)
    counts.count("t10", DENIED)
    first = scraper.scrape()
    assert set(first) == {"t10", "t9", "t8", "other"}
    # Entering the top starts a series at zero; what came before is other's.
    assert first["t10"] == [0, 0, 0]
    assert first["other"] == [sum(range(1, 11)), 1, 0]

    for _ in range(4):
        counts.count("t10", ALLOWED)
        counts.count("t9", SHADOW_DENIED)
    counts.count("t8", DENIED)
    second = scraper.scrape()
    assert second["t10"] == [4, 0, 0]
    assert second["t9"] == [0, 0, 4]
    assert second["t8"] == [0, 1, 0]
    assert second["other"] == first["other"]
    assert len(counts.entries) == 3


def test_the_top_follows_recent_decisions_not_history() -> None:
    counts = TenantCounts(2)
    scraper = Scraper(counts)
    for tenant, decisions in (("old", 1000), ("steady", 500)):
        for _ in range(decisions):
            counts.count(tenant, ALLOWED)
    scraper.scrape()
    scraper.scrape()
    assert set(scraper.last) == {"old", "steady", "other"}
    # "old" goes quiet; "new" is busier than it since the last scrape.
    for _ in range(5):
        counts.count("steady", ALLOWED)
        counts.count("new", DENIED)
    counts.count("old", ALLOWED)
    third = scraper.scrape()
    assert set(third) == {"steady", "new", "other"}
    # old's one decision since the last scrape went to other; new's five too.
    assert third["other"][ALLOWED] - scraper.seen[1]["other"][ALLOWED] == 1
    assert third["other"][DENIED] - scraper.seen[1]["other"][DENIED] == 5
    assert third["new"] == [0, 0, 0]


def test_ties_keep_the_tenants_already_exported() -> None:
    counts = TenantCounts(1)
    counts.count("a", ALLOWED)
    assert [tenant for tenant, _ in counts.snapshot()[0]] == ["a"]
    counts.count("b", ALLOWED)
    counts.count("a", ALLOWED)
    assert [tenant for tenant, _ in counts.snapshot()[0]] == ["a"]


def test_a_flood_of_distinct_tenants_stays_in_bounded_memory() -> None:
    counts = TenantCounts(20)
    scraper = Scraper(counts)
    for index in range(5):
        for _ in range(100):
            counts.count(f"busy-{index}", DENIED)
    scraper.scrape()

    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        largest = 0
        for index in range(100_000):
            counts.count(f"flood-{index}", ALLOWED)
            counts.count(f"busy-{index % 5}", DENIED)
            largest = max(largest, len(counts.entries))
        held = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()

    assert largest <= counts.capacity == 200
    # 200 entries of a short name and a list of six ints: far below a megabyte.
    assert held < 200_000, held
    assert counts.folds >= 100_000 // counts.capacity
    # The busy tenants were exported before the flood and are never folded.
    current = scraper.scrape()
    for index in range(5):
        assert current[f"busy-{index}"][DENIED] == 20_000
    assert len(current) == 21
    # Every flooded decision is somewhere: in other, or in a tenant newly exported (at 0).
    newcomers = sum(sum(values) for name, values in current.items() if name.startswith("flood"))
    assert newcomers == 0
    assert current["other"][ALLOWED] == 100_000


@PROPERTY
@given(
    max_tenants=st.integers(1, 4),
    capacity=st.integers(2, 12),
    steps=st.lists(
        st.one_of(
            st.tuples(st.integers(0, 15), st.sampled_from([ALLOWED, DENIED, SHADOW_DENIED])),
            st.just(None),
        ),
        max_size=300,
    ),
)
def test_every_decision_is_exported_once_and_every_series_only_grows(
    max_tenants: int, capacity: int, steps: list[tuple[int, int] | None]
) -> None:
    counts = TenantCounts(max_tenants, capacity=capacity)
    scraper = Scraper(counts)
    scraper.scrape()
    made = [0, 0, 0]
    for step in steps:
        if step is None:
            assert len(scraper.scrape()) <= max_tenants + 1
            continue
        tenant, result = step
        # Tenant 0 is named like the overflow series.
        counts.count(OTHER if tenant == 0 else f"t{tenant}", result)
        made[result] += 1
        assert len(counts.entries) <= counts.capacity
    scraper.scrape()
    assert scraper.increase == made
