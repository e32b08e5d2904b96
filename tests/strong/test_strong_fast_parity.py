"""FAST and STRONG mode give the same answers to the same requests.

The same policies (three algorithms, two bands each) are served by a FAST
gateway (memory) and a STRONG gateway (Redis); the same sequence of requests,
costs 1 to 3, goes to both, each request to one and at once to the other.
Windows are an hour and a day, so the few milliseconds between the twin
requests cannot change any figure; the run avoids the end of an hour.
"""

from __future__ import annotations

import random

import pytest
from redis_servers import RedisServer
from strong_support import GatewayFactory, allow, batch, clear_of_window_end, client, quota

pytestmark = pytest.mark.slow

ALGORITHMS = ["token_bucket", "fixed_window", "sliding_window"]

POLICIES = """
[[policies]]
tenant = "parity"
resource = "token_bucket"
algorithm = "token_bucket"
bands = [{ limit = 10, window = "1h", burst = 12 }, { limit = 20, window = "1d" }]

[[policies]]
tenant = "parity"
resource = "fixed_window"
algorithm = "fixed_window"
bands = [{ limit = 10, window = "1h" }, { limit = 14, window = "1d" }]

[[policies]]
tenant = "parity"
resource = "sliding_window"
algorithm = "sliding_window"
bands = [{ limit = 15, window = "1h" }, { limit = 12, window = "1d" }]
"""

REQUESTS_PER_ALGORITHM = 16


def figures(body: dict[str, object]) -> tuple[object, ...]:
    return (
        body.get("allowed"),
        body.get("limit"),
        body.get("remaining"),
        body.get("retry_after_seconds", 0) == 0,
    )


async def test_fast_and_strong_answer_alike(
    redis_server: RedisServer, gateway_factory: GatewayFactory
) -> None:
    fast = gateway_factory(POLICIES)
    strong = gateway_factory(POLICIES, redis_url=redis_server.url)
    await clear_of_window_end(redis_server, 3600, margin=15)
    chooser = random.Random(20240611)
    sequence = [
        (algorithm, chooser.randint(1, 3))
        for _ in range(REQUESTS_PER_ALGORITHM)
        for algorithm in ALGORITHMS
    ]

    async with client(fast) as fast_http, client(strong) as strong_http:
        answers = []
        for algorithm, cost in sequence:
            fast_answer = await allow(fast_http, "parity", algorithm, cost)
            strong_answer = await allow(strong_http, "parity", algorithm, cost)
            answers.append((algorithm, cost, fast_answer, strong_answer))
        # The batch path too, with one check per algorithm.
        checks = [("parity", algorithm, 1) for algorithm in ALGORITHMS]
        fast_batch = await batch(fast_http, checks)
        strong_batch = await batch(strong_http, checks)
        fast_quota = [await quota(fast_http, "parity", algorithm) for algorithm in ALGORITHMS]
        strong_quota = [await quota(strong_http, "parity", algorithm) for algorithm in ALGORITHMS]

    assert {strong_answer.mode for *_, strong_answer in answers} == {"strong"}
    assert {fast_answer.mode for _, _, fast_answer, _ in answers} == {"fast"}
    for algorithm in ALGORITHMS:
        mine = [entry for entry in answers if entry[0] == algorithm]
        fast_figures = [(cost, f.status, *figures(f.body)) for _, cost, f, _ in mine]
        strong_figures = [(cost, s.status, *figures(s.body)) for _, cost, _, s in mine]
        assert strong_figures == fast_figures, algorithm
        # Both allowed and denied answers occurred, so both paths were compared.
        assert {status for _, status, *_ in fast_figures} == {200, 429}, algorithm
        for _, _, fast_answer, strong_answer in mine:
            assert abs(fast_answer.body["reset_time"] - strong_answer.body["reset_time"]) <= 1, (
                algorithm
            )
            assert (
                abs(fast_answer.body["retry_after_ms"] - strong_answer.body["retry_after_ms"])
                <= 250
            ), algorithm

    fast_results = fast_batch.body["results"]
    strong_results = strong_batch.body["results"]
    assert [(r["status"], *figures(r)) for r in strong_results] == [
        (r["status"], *figures(r)) for r in fast_results
    ]
    for fast_answer, strong_answer in zip(fast_quota, strong_quota, strict=True):
        assert (strong_answer.status, strong_answer.body["remaining"]) == (
            fast_answer.status,
            fast_answer.body["remaining"],
        )
        assert [band["remaining"] for band in strong_answer.body["bands"]] == [
            band["remaining"] for band in fast_answer.body["bands"]
        ]
