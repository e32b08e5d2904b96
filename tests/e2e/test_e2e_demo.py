"""The classic demo against the real process: thirty calls, 150 ms apart."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pytest
from e2e_support import API_KEY, HeliosProcess

pytestmark = pytest.mark.slow

CALLS = 30
SPACING_SECONDS = 0.150
DEMO = f"/allow?tenant=acme&resource=demo&cost=1&api_key={API_KEY}"


def test_demo_counts_down_to_zero_then_denies_with_retry_after(
    helios_factory: Callable[..., HeliosProcess],
) -> None:
    # The built-in acme/demo policy: a token bucket of 10 refilled at 10 a minute,
    # one token every 6 s. The 30 calls take 4.35 s, so no whole token comes back.
    helios = helios_factory()
    responses = []
    with helios.client() as client:
        start = time.monotonic()
        for index in range(CALLS):
            pause = start + index * SPACING_SECONDS - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # the demo's deliberate spacing
            responses.append((client.get(DEMO), time.time()))
        elapsed = time.monotonic() - start
    assert elapsed < 6.0, f"the calls took {elapsed:.2f} s; a token came back in the meantime"

    allowed = [response for response, _ in responses[:10]]
    denied = [response for response, _ in responses[10:]]
    assert [response.status_code for response in allowed] == [200] * 10
    assert [response.json()["remaining"] for response in allowed] == list(range(9, -1, -1))
    assert [response.status_code for response in denied] == [429] * 20

    for response, sent_at in responses:
        body = response.json()
        assert body["tenant"] == "acme"
        assert body["resource"] == "demo"
        assert body["limit"] == 10
        assert body["policy"] == "acme/demo"
        headers = response.headers
        assert headers["x-ratelimit-limit"] == "10"
        assert headers["x-ratelimit-remaining"] == str(body["remaining"])
        assert headers["x-ratelimit-reset"] == str(body["reset_time"])
        assert abs(body["reset_time"] - (sent_at + body["reset_seconds"])) <= 2
        assert headers["ratelimit-policy"] == '"acme/demo";q=10;w=60'
        if response.status_code == 200:
            assert body["allowed"] is True
            assert body["retry_after_seconds"] == 0
            assert "retry-after" not in headers
            assert headers["ratelimit"].startswith(f'"acme/demo";r={body["remaining"]};t=')
        else:
            assert body["allowed"] is False
            assert body["remaining"] == 0
            assert body["error"] == "rate limit exceeded"
            retry_after = body["retry_after_seconds"]
            assert retry_after >= 1
            assert retry_after == math.ceil(body["retry_after_ms"] / 1000)
            # The next token is due 6 s after the first call, whatever was denied since.
            assert 0 < body["retry_after_ms"] <= 6000
            assert headers["retry-after"] == str(retry_after)
            assert headers["ratelimit"] == f'"acme/demo";r=0;t={retry_after}'

    # Waiting for the same next token: the wait shrinks as time passes.
    waits = [response.json()["retry_after_ms"] for response in denied]
    assert waits == sorted(waits, reverse=True)
