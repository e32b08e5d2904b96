"""A gateway whose own clock is an hour off decides exactly like the others.

STRONG mode takes the time of every decision from Redis (``TIME`` inside the
script). One gateway runs under libfaketime with its clock an hour ahead; if
it used its own clock, a token bucket it touched would look an hour older
(fully refilled) and every ``reset_time`` it reported would be an hour late.
"""

from __future__ import annotations

import datetime
import math
import time
from pathlib import Path

import pytest
from e2e_support import HeliosProcess
from redis_servers import RedisServer
from strong_support import Answer, GatewayFactory, allow, clear_of_window_end, client

pytestmark = pytest.mark.slow

SKEW_SECONDS = 3600
LIMIT = 100
WINDOW_SECONDS = 3600
# Costs 1, 2, 3 in turn over 30 requests: 60 units, well within the limit.
COSTS = [1 + index % 3 for index in range(30)]

POLICIES = """
[[policies]]
tenant = "skew"
resource = "token"
algorithm = "token_bucket"
limit = 100
window = "1h"

[[policies]]
tenant = "skew"
resource = "fixed"
algorithm = "fixed_window"
limit = 100
window = "1h"

[[policies]]
tenant = "skew"
resource = "sliding"
algorithm = "sliding_window"
limit = 100
window = "1h"
"""

_LIBFAKETIME = [
    Path(directory) / name
    for directory in (
        "/usr/lib/x86_64-linux-gnu/faketime",
        "/usr/lib/aarch64-linux-gnu/faketime",
        "/usr/lib/faketime",
        "/usr/local/lib/faketime",
    )
    for name in ("libfaketimeMT.so.1", "libfaketime.so.1")
]


def libfaketime() -> Path | None:
    return next((path for path in _LIBFAKETIME if path.is_file()), None)


def log_clock_offset(helios: HeliosProcess) -> float:
    """How far the process's clock is ahead, judged by its first log line's timestamp.

    The text log starts ``YYYY-MM-DD HH:MM:SS,mmm`` in local time; the line was
    written within a few seconds before this call.
    """
    first_line = helios.log().splitlines()[0]
    stamp = datetime.datetime.strptime(first_line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp() - time.time()


@pytest.mark.parametrize("clock", ["skewed", "same"])
async def test_gateways_with_skewed_clocks_make_one_consistent_sequence(
    clock: str, redis_server: RedisServer, gateway_factory: GatewayFactory
) -> None:
    skewed_settings: dict[str, str] = {}
    if clock == "skewed":
        library = libfaketime()
        if library is None:
            pytest.skip(
                "libfaketime is not installed (apt-get install faketime), so no gateway"
                " can run with a skewed clock; the same-clock variant still runs"
            )
        skewed_settings = {"FAKETIME": f"+{SKEW_SECONDS}s", "LD_PRELOAD": str(library)}
    plain = gateway_factory(POLICIES, redis_url=redis_server.url)
    other = gateway_factory(POLICIES, redis_url=redis_server.url, settings=skewed_settings)
    if clock == "skewed":
        # The preload took effect: the process lives an hour ahead.
        assert log_clock_offset(other) == pytest.approx(SKEW_SECONDS, abs=30)
        assert log_clock_offset(plain) == pytest.approx(0, abs=30)
    await clear_of_window_end(redis_server, WINDOW_SECONDS, margin=15)

    async with client(plain) as first, client(other) as second:
        for resource in ("token", "fixed", "sliding"):
            answers: list[Answer] = []
            real_times: list[float] = []
            for index, cost in enumerate(COSTS):
                real_times.append(time.time())
                answers.append(await allow((first, second)[index % 2], "skew", resource, cost))

            assert [answer.status for answer in answers] == [200] * len(COSTS), resource
            assert {answer.mode for answer in answers} == {"strong"}
            # One sequence: every answer continues from the one before, whichever
            # gateway gave it; nothing was refilled or counted twice.
            spent = [sum(COSTS[: index + 1]) for index in range(len(COSTS))]
            assert [answer.remaining for answer in answers] == [LIMIT - s for s in spent]

            reset_times = [answer.body["reset_time"] for answer in answers]
            if resource == "token":
                # Back to full once the spent units have refilled at 100 per hour:
                # reset_time - spent × 36 s is the decision time, the same moment
                # (within a second) for both gateways.
                implied = [
                    reset - units * WINDOW_SECONDS / LIMIT
                    for reset, units in zip(reset_times, spent, strict=True)
                ]
                assert max(implied) - min(implied) <= 1.0 + 1e-9, implied
            else:
                # The window's end, the same for every answer.
                assert max(reset_times) - min(reset_times) <= 1, reset_times
                assert reset_times[0] == math.ceil(real_times[0] / 3600) * 3600
            for answer, sent in zip(answers, real_times, strict=True):
                # Decision time is real time, not the skewed gateway's.
                assert abs(answer.body["reset_time"] - answer.body["reset_seconds"] - sent) <= 2
