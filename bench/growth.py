"""Latency growth with the number of live buckets, over HTTP (``make bench-growth``).

One FAST gateway on one core, wrk on the other. First the latency of one hot
key; then wrk fills the table with ``--keys`` live buckets (a policy of 1000 a
day keeps every touched bucket non-idle); then the latency of requests spread
over all of them, and of the hot key again. PRODUCT §10: 1 key vs 1,000,000
keys, at most 1.5 × the latency.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

from run import (
    API_KEY,
    HOST,
    WRK_CPU,
    BenchError,
    Server,
    _helios_env,
    free_port,
    run_wrk,
    wrk_command,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
POLICY = '[[policies]]\ntenant = "*"\nresource = "*"\nlimit = 1000\nwindow = "1d"\n'
BAR = 1.5


def spread_command(port: int, duration: int, connections: int) -> list[str]:
    return [
        "taskset",
        "-c",
        str(WRK_CPU),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "-s",
        str(REPO_ROOT / "bench" / "spread.lua"),
        f"http://{HOST}:{port}",
    ]


def buckets(metrics_port: int) -> int:
    url = f"http://{HOST}:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("helios_buckets "):
                return int(float(line.split()[1]))
    raise BenchError("no helios_buckets in /metrics")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--duration", type=int, default=8, help="seconds per measurement")
    parser.add_argument("--fill-seconds", type=int, default=60)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    os.environ["KEYS_N"] = str(args.keys)
    os.environ["API_KEY"] = API_KEY
    with tempfile.TemporaryDirectory(prefix="helios-growth-") as tmp:
        policies = Path(tmp) / "policies.toml"
        policies.write_text(POLICY)
        port = free_port()
        env = _helios_env(port)
        metrics_port = int(env["HELIOS_METRICS_PORT"])
        env["HELIOS_GATEWAY_MAX_BUCKETS"] = str(args.keys + 1)
        command = [sys.executable, "-m", "helios", "--role", "gateway", "--policies", str(policies)]
        server = Server("helios", command, port, env, Path(tmp))
        server.start()
        try:
            server.wait_ready()
            hot = [run_wrk(wrk_command(port, args.duration, args.connections), args.duration)]
            run_wrk(spread_command(port, args.fill_seconds, args.connections), args.fill_seconds)
            live = buckets(metrics_port)
            spread = run_wrk(spread_command(port, args.duration, args.connections), args.duration)
            hot.append(run_wrk(wrk_command(port, args.duration, args.connections), args.duration))
            server.check_alive()
        finally:
            server.stop()
    hot_p50 = statistics.median(r.p50_ms for r in hot)
    hot_p99 = statistics.median(r.p99_ms for r in hot)
    print(f"\nLatency growth over HTTP ({args.connections} connections, {live:,} live buckets):")
    print(f"{'requests':<28} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    hot_rps = statistics.median(r.requests_per_sec for r in hot)
    print(f"{'one hot key (median of 2)':<28} {hot_rps:>8.0f} {hot_p50:>8.2f} {hot_p99:>8.2f}")
    print(
        f"{'spread over every key':<28} {spread.requests_per_sec:>8.0f}"
        f" {spread.p50_ms:>8.2f} {spread.p99_ms:>8.2f}"
    )
    p50_ratio, p99_ratio = spread.p50_ms / hot_p50, spread.p99_ms / hot_p99
    ok = p50_ratio <= BAR and p99_ratio <= BAR and live >= args.keys * 0.95
    print(
        f"VERDICT: {'PASS' if ok else 'FAIL'} -- p50 {p50_ratio:.2f}x, p99 {p99_ratio:.2f}x"
        f" with {live:,} buckets (bar <= {BAR}x at {args.keys:,} keys)"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"bench: cannot run: {error}", file=sys.stderr)
        sys.exit(2)
