"""Two STRONG gateways on one Redis admit exactly a policy's limit, together."""

from __future__ import annotations

from collections import Counter

import pytest
from redis_servers import RedisServer
from strong_support import GatewayFactory, allow, clear_of_window_end, client, gather

pytestmark = pytest.mark.slow

LIMIT = 100
REQUESTS = 500
CONCURRENCY = 50

POLICIES = "".join(
    f"""
[[policies]]
tenant = "{algorithm}"
resource = "*"
algorithm = "{algorithm}"
limit = {LIMIT}
window = "1h"
"""
    for algorithm in ("token_bucket", "fixed_window", "sliding_window")
)


@pytest.mark.parametrize("algorithm", ["token_bucket", "fixed_window", "sliding_window"])
async def test_two_gateways_admit_exactly_the_limit(
    algorithm: str, redis_server: RedisServer, gateway_factory: GatewayFactory
) -> None:
    gateways = [gateway_factory(POLICIES, redis_url=redis_server.url) for _ in range(2)]
    # The whole run must fall in one hourly window (fixed and sliding window).
    await clear_of_window_end(redis_server, 3600, margin=15)

    async with client(gateways[0]) as first, client(gateways[1]) as second:
        clients = (first, second)
        answers = await gather(
            lambda index: allow(clients[index % 2], algorithm, "shared"),
            range(REQUESTS),
            concurrency=CONCURRENCY,
        )

    assert Counter(answer.status for answer in answers) == {200: LIMIT, 429: REQUESTS - LIMIT}
    assert {answer.mode for answer in answers} == {"strong"}
    allowed = [answer for answer in answers if answer.allowed]
    # Both gateways admitted some: the requests really were spread over both.
    assert {index % 2 for index, answer in enumerate(answers) if answer.allowed} == {0, 1}
    assert sorted(answer.remaining for answer in allowed) == list(range(LIMIT))
    assert {answer.remaining for answer in answers if not answer.allowed} == {0}
    assert all(answer.headers["retry-after"] for answer in answers if not answer.allowed)
