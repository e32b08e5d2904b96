"""Editing the policy file of a running process: applied within a second, counters kept."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from e2e_support import API_KEY, HeliosProcess

pytestmark = pytest.mark.slow

POLICY = """
[[policies]]
tenant = "acme"
resource = "search"
limit = {limit}
window = "1h"
"""
QUOTA = "/api/v1/quota/acme?resource=search"
ALLOW = "/allow?tenant=acme&resource=search&cost={cost}"
HEADERS = {"X-API-Key": API_KEY}


def _wait_for_limit(client: httpx.Client, limit: int) -> dict[str, object]:
    """Poll the quota (which charges nothing) until the new limit shows; at most 3 s."""
    deadline = time.monotonic() + 3.0
    while True:
        quota: dict[str, object] = client.get(QUOTA, headers=HEADERS).json()
        if quota["limit"] == limit or time.monotonic() > deadline:
            return quota
        time.sleep(0.05)  # waiting on the real process's one-second poll


def test_a_policy_file_change_applies_without_refilling(
    helios_factory: Callable[..., HeliosProcess],
) -> None:
    helios = helios_factory(policies=POLICY.format(limit=10))
    policy_file = Path(helios.log_path).parent / "policies.toml"
    with helios.client() as client:
        spent = client.get(ALLOW.format(cost=7), headers=HEADERS).json()
        assert spent["remaining"] == 3

        started = time.monotonic()
        policy_file.write_text(POLICY.format(limit=20), encoding="utf-8")
        quota = _wait_for_limit(client, 20)
        assert time.monotonic() - started < 2.5
        # 7 of 10 spent, limit raised to 20: 13 left, not a refill to 20.
        assert (quota["limit"], quota["remaining"]) == (20, 13)

        policy_file.write_text(POLICY.format(limit=5), encoding="utf-8")
        quota = _wait_for_limit(client, 5)
        # Lowered to 5 with 7 spent: nothing left, and still nothing refilled.
        assert (quota["limit"], quota["remaining"]) == (5, 0)
        assert client.get(ALLOW.format(cost=1), headers=HEADERS).status_code == 429

        policy_file.write_text("[[policies]]\ntenant = 'acme'\n", encoding="utf-8")
        time.sleep(1.5)  # longer than one poll: the broken file must have been seen
        quota = client.get(QUOTA, headers=HEADERS).json()
        assert quota["limit"] == 5
    assert "policy file not reloaded" in helios.log()
    assert "policies[0].resource is required" in helios.log()


def test_sighup_reloads_an_edit_the_poll_cannot_see(
    helios_factory: Callable[..., HeliosProcess],
) -> None:
    helios = helios_factory(policies=POLICY.format(limit=10))
    policy_file = Path(helios.log_path).parent / "policies.toml"
    stat = policy_file.stat()
    with helios.client() as client:
        # Same size, same modification time: invisible to the one-second poll.
        policy_file.write_text(POLICY.format(limit=30), encoding="utf-8")
        os.utime(policy_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        time.sleep(1.5)  # longer than one poll
        assert client.get(QUOTA, headers=HEADERS).json()["limit"] == 10

        helios.process.send_signal(signal.SIGHUP)
        quota = _wait_for_limit(client, 30)
        assert quota["limit"] == 30
