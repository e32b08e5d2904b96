"""A policy change in STRONG mode carries spent units: never a refill.

Each change is made by editing the running gateway's policy file (applied
within a second). The spent units must survive changes of limit, of window
and of algorithm, although the last two give the bands new Redis keys.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from e2e_support import API_KEY
from redis_servers import RedisServer
from strong_support import GatewayFactory

pytestmark = pytest.mark.slow

POLICY = """
[[policies]]
tenant = "acme"
resource = "search"
algorithm = "{algorithm}"
limit = {limit}
window = "{window}"
"""
HEADERS = {"X-API-Key": API_KEY}
QUOTA = "/api/v1/quota/acme?resource=search"


def _apply(client: httpx.Client, path: Path, limit: int, **policy: str) -> dict[str, object]:
    path.write_text(POLICY.format(limit=limit, **policy), encoding="utf-8")
    deadline = time.monotonic() + 3.0
    while True:
        quota: dict[str, object] = client.get(QUOTA, headers=HEADERS).json()
        bands = quota["bands"]
        assert isinstance(bands, list)
        window = bands[0]["window"]
        if (quota["algorithm"], quota["limit"], window) == (
            policy["algorithm"],
            limit,
            policy["window"],
        ) or time.monotonic() > deadline:
            return quota
        time.sleep(0.05)  # waiting on the real process's one-second poll


@pytest.mark.parametrize(
    "first, changes",
    [
        (
            {"algorithm": "fixed_window", "window": "1h"},
            [
                (20, {"algorithm": "fixed_window", "window": "1h"}, 13),
                (20, {"algorithm": "fixed_window", "window": "1d"}, 13),
                (20, {"algorithm": "sliding_window", "window": "1d"}, 13),
                (20, {"algorithm": "token_bucket", "window": "1d"}, 13),
                (5, {"algorithm": "token_bucket", "window": "1d"}, 0),
            ],
        ),
        (
            {"algorithm": "token_bucket", "window": "1d"},
            [
                (20, {"algorithm": "token_bucket", "window": "1d"}, 13),
                (20, {"algorithm": "token_bucket", "window": "1w"}, 13),
                (20, {"algorithm": "fixed_window", "window": "1w"}, 13),
            ],
        ),
    ],
    ids=["from-fixed-window", "from-token-bucket"],
)
def test_changes_of_limit_window_and_algorithm_never_refill(
    redis_server: RedisServer,
    gateway_factory: GatewayFactory,
    first: dict[str, str],
    changes: list[tuple[int, dict[str, str], int]],
) -> None:
    gateway = gateway_factory(POLICY.format(limit=10, **first), redis_url=redis_server.url)
    policy_file = Path(gateway.log_path).parent / "policies.toml"
    with gateway.client() as client:
        spent = client.get("/allow?tenant=acme&resource=search&cost=7", headers=HEADERS).json()
        assert (spent["mode"], spent["remaining"]) == ("strong", 3)
        for limit, policy, remaining in changes:
            quota = _apply(client, policy_file, limit, **policy)
            assert quota["limit"] == limit, f"the change to {policy} was not applied"
            # Seven units spent (a day's or a week's window barely drips back).
            assert quota["remaining"] == remaining, (policy, quota)
