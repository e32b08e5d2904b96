"""Benchmark of the STRONG mode Redis client against redis-benchmark.

Starts a private ``redis-server`` (pinned to core 0), then alternates rounds
of

* ``redis-benchmark -c 50 EVALSHA <sha> 0`` (C client, 50 connections), and
* Helios' client: 50 trio tasks calling ``evalsha`` of the same script in a
  loop over one pooled client,

both pinned to core 1, and prints decisions per second of each (medians over
the rounds) and their ratio. The bar (PRODUCT §10): the client reaches at
least 0.6 × redis-benchmark. Missing the bar is reported, not fatal: the exit
status is non-zero only if the benchmark could not run.

Usage::

    python bench/redis_client.py [--duration 5] [--rounds 3] [--concurrency 50]
                                 [--pool-size 4] [--requests 200000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from helios.backends.redis import Script, open_redis

SERVER_CPU = 0
CLIENT_CPU = 1
BAR = 0.6
READY_TIMEOUT_S = 10.0

# Small, like a decision script: reads the server's clock and returns.
SCRIPT = Script("local now = redis.call('TIME') return tonumber(now[1])")

_RPS = re.compile(r"EVALSHA[^:]*:\s*([0-9.]+) requests per second")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pinning() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def _pinned(command: Sequence[str], cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu), *command] if _pinning() else list(command)


def _start_server(port: int, directory: Path) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        _pinned(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
            ],
            SERVER_CPU,
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("redis-server exited at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return server
        except OSError:
            time.sleep(0.02)
    server.kill()
    raise SystemExit("redis-server did not start")


async def load_script(port: int) -> None:
    async with open_redis(f"redis://127.0.0.1:{port}", timeout_ms=1000) as client:
        assert await client.execute("SCRIPT", "LOAD", SCRIPT.source) == SCRIPT.sha.encode()


def redis_benchmark(port: int, requests: int, concurrency: int) -> float:
    """Requests per second of redis-benchmark's EVALSHA."""
    result = subprocess.run(
        _pinned(
            [
                "redis-benchmark",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-n",
                str(requests),
                "-c",
                str(concurrency),
                "-q",
                "EVALSHA",
                SCRIPT.sha,
                "0",
            ],
            CLIENT_CPU,
        ),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"redis-benchmark failed:\n{result.stdout}{result.stderr}")
    matches = _RPS.findall(result.stdout.replace("\r", "\n"))
    if not matches:
        raise SystemExit(f"cannot read redis-benchmark's output:\n{result.stdout}")
    return float(matches[-1])


async def helios_client(port: int, duration_s: float, concurrency: int, pool_size: int) -> float:
    """Calls per second of ``evalsha`` from ``concurrency`` tasks over one client."""
    completed = 0
    async with open_redis(
        f"redis://127.0.0.1:{port}", timeout_ms=1000, pool_size=pool_size
    ) as client:
        await client.evalsha(SCRIPT, [], [])

        async def caller(until: float) -> None:
            nonlocal completed
            while trio.current_time() < until:
                await client.evalsha(SCRIPT, [], [])
                completed += 1

        # A short warm-up, then the measured run.
        for seconds in (min(1.0, duration_s), duration_s):
            completed = 0
            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                for _ in range(concurrency):
                    nursery.start_soon(caller, started + seconds)
            elapsed = trio.current_time() - started
    return completed / elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per client round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200_000, help="per redis-benchmark round")
    options = parser.parse_args(argv)
    for tool in ("redis-server", "redis-benchmark"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 1
    if _pinning():
        os.sched_setaffinity(0, {CLIENT_CPU})
    else:
        print("note: taskset or a second core is missing; nothing is pinned", file=sys.stderr)

    port = _free_port()
    with tempfile.TemporaryDirectory() as directory:
        server = _start_server(port, Path(directory))
        try:
            trio.run(load_script, port)
            baseline: list[float] = []
            ours: list[float] = []
            for _ in range(options.rounds):
                baseline.append(redis_benchmark(port, options.requests, options.concurrency))
                ours.append(
                    trio.run(
                        helios_client,
                        port,
                        options.duration,
                        options.concurrency,
                        options.pool_size,
                    )
                )
        finally:
            server.terminate()
            server.wait(10)

    reference = statistics.median(baseline)
    measured = statistics.median(ours)
    ratio = measured / reference
    print(
        f"EVALSHA, {options.concurrency} concurrent callers, median of {options.rounds} rounds"
        f" (server on core {SERVER_CPU}, clients on core {CLIENT_CPU}"
        f"{'' if _pinning() else ', unpinned'}):"
    )
    rows = [
        (f"redis-benchmark (C, {options.concurrency} connections)", reference),
        (f"helios client (pool of {options.pool_size})", measured),
    ]
    for label, rate in rows:
        print(f"  {label + ':':<42}{rate:>10,.0f} /s")
    print(f"  ratio: {ratio:.2f} (bar: >= {BAR}) -> {'met' if ratio >= BAR else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
