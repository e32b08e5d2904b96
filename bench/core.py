"""In-process benchmark of the decision path (part of ``make bench``).

Measures what PRODUCT §10 asks of the FAST backend beyond HTTP throughput:

* memory per active key in the bucket table (bar: ≤ 200 bytes);
* latency growth of one decision from 1 key to 1,000,000 keys, and from 1
  policy to 100,000 policies (bar: ≤ 1.5 × the small case).

Each latency is the median over several timed passes of the same calls.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable

import trio

from helios.backends.memory import BucketTable
from helios.core.policy import PolicySet, parse_policy
from helios.gateway.auth import KeyRing
from helios.gateway.http_api import HttpApi
from helios.gateway.metrics import GatewayMetrics
from helios.gateway.service import Check, Clock, Gateway
from helios.server.http import Request

NOW_NS = 1_800_000_000 * 1_000_000_000
# What one request may cost at the FAST target of 20,000 requests a second.
REQUEST_BUDGET_NS = 50_000


class _FixedClock(Clock):
    def now_ns(self) -> int:
        return NOW_NS


def _gateway(policies: PolicySet, max_buckets: int) -> Gateway:
    return Gateway(policies, BucketTable(max_buckets), KeyRing(["k"]), _FixedClock(0))


def _catch_all() -> PolicySet:
    return PolicySet(
        [parse_policy({"tenant": "*", "resource": "*", "limit": 10**9, "window": "1s"})]
    )


def memory_per_key(keys: int) -> float:
    """Bytes of table memory per active key, with realistic tenant and resource names."""
    policy = _catch_all().resolve("t", "r")
    assert policy is not None
    table = BucketTable(keys)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for index in range(keys):
        table.decide(policy, f"tenant-{index % 1000}", f"user:{index}", NOW_NS, 1)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / keys


def _median_ns_per_call(run: Callable[[], None], calls: int, passes: int) -> float:
    timings = []
    for _ in range(passes):
        started = time.perf_counter_ns()
        run()
        timings.append((time.perf_counter_ns() - started) / calls)
    return statistics.median(timings)


def decision_latency(gateway: Gateway, checks: list[Check], passes: int) -> float:
    allow = gateway.allow

    def run() -> None:
        for check in checks:
            allow(check, "k")

    run()  # warm-up: every key exists and every pair is resolved once
    return _median_ns_per_call(run, len(checks), passes)


def key_growth(large: int, calls: int, passes: int) -> tuple[float, float]:
    small = _gateway(_catch_all(), 10)
    one_key = [Check("tenant-0", "user:0", 1)] * calls
    big = _gateway(_catch_all(), large)
    for index in range(large):
        big.allow(Check(f"tenant-{index % 1000}", f"user:{index}", 1), "k")
    rng = random.Random(7)
    spread = [
        Check(f"tenant-{index % 1000}", f"user:{index}", 1)
        for index in (rng.randrange(large) for _ in range(calls))
    ]
    return decision_latency(small, one_key, passes), decision_latency(big, spread, passes)


def policy_growth(count: int, calls: int, passes: int) -> tuple[float, float]:
    one = _gateway(_catch_all(), 100_000)
    documents = [
        {
            "tenant": f"tenant-{index}",
            "resource": f"res-{index % 7}*",
            "limit": 10**9,
            "window": "1s",
        }
        for index in range(count)
    ]
    documents.append({"tenant": "*", "resource": "*", "limit": 10**9, "window": "1s"})
    many = _gateway(PolicySet(parse_policy(document) for document in documents), 100_000)
    rng = random.Random(11)
    picks = [rng.randrange(count) for _ in range(calls)]
    same_keys = [Check(f"tenant-{index}", f"res-{index % 7}:x", 1) for index in picks]
    return decision_latency(one, same_keys, passes), decision_latency(many, same_keys, passes)


class _NoMetrics(GatewayMetrics):
    def observe(self, route: str, status: int, seconds: float) -> None:
        pass


def metrics_cost(calls: int, passes: int) -> tuple[float, float]:
    """Time of the whole HTTP handler per request, without and with metrics."""
    request = Request()
    request.method = "GET"
    request.path = "/allow"
    request.query = "tenant=acme&resource=demo&cost=1"
    request.headers = [(b"host", b"bench"), (b"x-api-key", b"k")]

    def timed(metrics: GatewayMetrics) -> float:
        api = HttpApi(_gateway(_catch_all(), 1000), metrics, max_batch_checks=10)

        async def run() -> float:
            async def loop() -> None:
                for _ in range(calls):
                    await api(request)

            await loop()
            timings = []
            for _ in range(passes):
                started = time.perf_counter_ns()
                await loop()
                timings.append((time.perf_counter_ns() - started) / calls)
            return statistics.median(timings)

        return trio.run(run)

    return timed(_NoMetrics()), timed(GatewayMetrics())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--policies", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args(argv)

    per_key = memory_per_key(args.keys)
    small_keys, large_keys = key_growth(args.keys, args.calls, args.passes)
    small_policies, large_policies = policy_growth(args.policies, args.calls, args.passes)
    bare, metered = metrics_cost(args.calls, args.passes)

    rows = [
        ("memory per active key", f"{per_key:.0f} B", "<= 200 B", per_key <= 200),
        (
            f"decision, 1 key -> {args.keys:,} keys",
            f"{small_keys / 1000:.2f} -> {large_keys / 1000:.2f} us"
            f" ({large_keys / small_keys:.2f}x)",
            "<= 1.5x",
            large_keys / small_keys <= 1.5,
        ),
        (
            f"decision, 1 policy -> {args.policies:,} policies",
            f"{small_policies / 1000:.2f} -> {large_policies / 1000:.2f} us"
            f" ({large_policies / small_policies:.2f}x)",
            "<= 1.5x",
            large_policies / small_policies <= 1.5,
        ),
        (
            # The handler is a fraction of a request's cost; the bar is the
            # metrics' share of a whole request at the FAST target rate.
            "metrics cost per request (handler off -> on)",
            f"+{(metered - bare) / 1000:.2f} us"
            f" ({(metered - bare) / REQUEST_BUDGET_NS * 100:.1f}% of 50 us)",
            "<= 5%",
            metered - bare <= 0.05 * REQUEST_BUDGET_NS,
        ),
    ]
    print(f"\nDecision core (in process, medians of {args.passes} passes of {args.calls:,} calls):")
    print(f"{'what':42} {'measured':32} {'bar':9} verdict")
    for what, measured, bar, ok in rows:
        print(f"{what:42} {measured:32} {bar:9} {'ok' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
