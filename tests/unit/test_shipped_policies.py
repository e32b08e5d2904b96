"""Every policy file shipped with Helios loads and means what it says."""

from __future__ import annotations

from pathlib import Path

import pytest

from helios.store.policy_file import DEFAULT_SOURCE, load_policies

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(
    [*ROOT.glob("examples/*.toml"), ROOT / "loadtest/policies.toml", ROOT / "bench/policies.toml"]
)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: str(path.relative_to(ROOT)))
def test_shipped_policy_file_loads(path: Path) -> None:
    policies, source = load_policies(str(path))
    assert source == str(path)
    assert len(policies) >= 1


def test_default_policies_serve_the_demo() -> None:
    policies, source = load_policies(None)
    assert source == DEFAULT_SOURCE
    demo = policies.resolve("acme", "demo")
    assert demo is not None and demo.name == "acme/demo"
    assert [(band.limit, band.window_seconds) for band in demo.bands] == [(10, 60.0)]
    fallback = policies.resolve("someone", "anything")
    assert fallback is not None and fallback.name == "*/*"


def test_sweeper_work_is_bounded_on_a_sparse_table() -> None:
    from helios.backends.memory import BucketTable

    table = BucketTable(1_000_000)
    table.sweep(0, budget=64)
    # Only a bounded number of shards is visited per call, however many exist.
    assert table.statistics().shards > 64
    assert table._cursor == 64
