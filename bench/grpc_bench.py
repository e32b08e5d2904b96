"""gRPC benchmark: the gateway's ``Allow``/``AllowBatch`` vs a bare purerpc echo service.

Two servers run side by side in one invocation, both pinned to core 0:

* ``helios``: ``python -m helios --role gateway --policies bench/policies.toml``
  (a limit nobody reaches, so every check is allowed), gRPC on 127.0.0.1;
* ``echo``: ``python -m bench.grpc_echo``, a helios.v1.RateLimitService that
  answers a constant decision, served through Helios's own gRPC listener
  machinery (see ``bench/grpc_echo.py``), so both differ only in the work done
  per call.

The load generator is a Python grpcio (``grpc.aio``) client pinned to core 1,
started afresh for each measurement: ``--concurrency`` calls in flight over
``--channels`` HTTP/2 connections for ``--duration`` seconds; it counts the
calls completed within that time. ``AllowBatch`` calls carry
``--batch-size`` checks each, and count that many decisions per call. After a
warm-up per target and method, rounds alternate echo/helios for Allow, then
echo/helios for AllowBatch, and the table quotes medians over the rounds.

Bars (PRODUCT §10):

* helios Allow calls/s >= 0.8 x echo Allow calls/s;
* helios AllowBatch decisions/s >= 50 x helios Allow calls/s.

Missing a bar is reported, not fatal: the exit status is 0 whenever the
benchmark could run, and non-zero only if it could not (taskset missing, a
server that does not start or dies, a client that completes no call).

Usage::

    python bench/grpc_bench.py [--duration 5] [--rounds 3] [--concurrency 64]
                               [--channels 4] [--batch-size 100]
                               [--python PY] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from run import (
    API_KEY,
    DEFAULT_HELIOS_CMD,
    HOST,
    READY_TIMEOUT,
    SERVER_CPU,
    WRK_CPU,
    BenchError,
    Server,
    _helios_env,
    free_port,
    split_cmd,
)

ALLOW_BAR = 0.8  # helios Allow calls/s over echo Allow calls/s
BATCH_BAR = 50.0  # helios AllowBatch decisions/s over helios Allow calls/s
WARMUP_SECONDS = 1.0
CLIENT_GRACE_S = 60.0
METHODS = ("Allow", "AllowBatch")
SERVICE = "helios.v1.RateLimitService"
TENANT = "acme"
RESOURCE = "demo"
ECHO_CMD = "{python} -m bench.grpc_echo --host " + HOST + " --port {port}"


# ------------------------------------------------------------------------ client


async def _client_main(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement: ``concurrency`` calls in flight for ``duration`` seconds."""
    import asyncio

    import grpc
    from grpc import aio

    from helios.grpc.generated.helios.v1 import ratelimit_pb2 as pb

    check = pb.AllowRequest(tenant=TENANT, resource=RESOURCE, cost=1)
    if args.method == "Allow":
        message: Any = check
        response_type: Any = pb.Decision
        per_call = 1
    else:
        message = pb.AllowBatchRequest(checks=[check] * args.batch_size)
        response_type = pb.AllowBatchResponse
        per_call = args.batch_size
    payload = message.SerializeToString()
    path = f"/{SERVICE}/{args.method}"
    metadata = (("x-api-key", API_KEY),)

    channels = [
        aio.insecure_channel(args.target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(args.channels)
    ]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), timeout=10)
        # Requests go pre-serialized and replies stay bytes in the loop, so
        # the client spends no time on protobuf; one checked call comes first.
        raw = [channel.unary_unary(path) for channel in channels]
        checked = channels[0].unary_unary(
            path,
            request_serializer=type(message).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        first = await checked(message, metadata=metadata, timeout=10)
        if args.method == "Allow":
            sample = {"allowed": first.allowed, "decisions": 1, "policy": first.policy}
        else:
            decisions = [r for r in first.results if not r.HasField("error")]
            sample = {
                "allowed": bool(decisions) and all(d.allowed for d in decisions),
                "decisions": len(decisions),
                "policy": decisions[0].policy if decisions else "",
            }

        calls = 0
        errors: dict[str, int] = {}
        start = time.monotonic()
        end = start + args.duration

        async def worker(call: Any) -> None:
            nonlocal calls
            while time.monotonic() < end:
                try:
                    await call(payload, metadata=metadata, timeout=10)
                except aio.AioRpcError as error:
                    code = error.code().name
                    errors[code] = errors.get(code, 0) + 1
                    if code == grpc.StatusCode.UNAVAILABLE.name:
                        await asyncio.sleep(0.01)
                    continue
                if time.monotonic() <= end:
                    calls += 1

        await asyncio.gather(*(worker(raw[i % len(raw)]) for i in range(args.concurrency)))
        return {
            "calls": calls,
            "decisions": calls * per_call,
            "seconds": args.duration,
            "calls_per_sec": calls / args.duration,
            "decisions_per_sec": calls * per_call / args.duration,
            "errors": errors,
            "sample": sample,
        }
    finally:
        for channel in channels:
            await channel.close()


def client(args: argparse.Namespace) -> int:
    """``--client`` mode: run one measurement and print it as JSON."""
    import asyncio

    try:
        result = asyncio.run(_client_main(args))
    except Exception as exc:
        print(json.dumps({"failure": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0


# ----------------------------------------------------------------------- servers


class GrpcTarget(Server):
    """A server whose readiness is its gRPC port accepting connections."""

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll a TCP connect to the gRPC port, or raise after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                with socket.create_connection((HOST, self.port), timeout=1.0):
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise BenchError(
                    f"{self.name} server not listening on {HOST}:{self.port} after "
                    f"{timeout:.0f} s; last output:\n{self.log_tail()}"
                )
            time.sleep(0.1)


def build_servers(args: argparse.Namespace, log_dir: Path) -> tuple[Server, Server]:
    """The echo and Helios servers, on fresh free ports (not yet started)."""
    echo_port = free_port()
    echo = GrpcTarget("echo", split_cmd(ECHO_CMD, args.python, echo_port), echo_port, {}, log_dir)
    http_port = free_port()
    grpc_port = free_port()
    env = {
        **_helios_env(http_port),
        "HELIOS_GRPC_HOST": HOST,
        "HELIOS_GRPC_PORT": str(grpc_port),
    }
    helios = GrpcTarget(
        "helios", split_cmd(DEFAULT_HELIOS_CMD, args.python, http_port), grpc_port, env, log_dir
    )
    return echo, helios


def client_command(args: argparse.Namespace, port: int, method: str, duration: float) -> list[str]:
    """The pinned client command line for one measurement."""
    return [
        "taskset",
        "-c",
        str(WRK_CPU),
        args.python,
        str(Path(__file__).resolve()),
        "--client",
        "--target",
        f"{HOST}:{port}",
        "--method",
        method,
        "--duration",
        f"{duration:g}",
        "--concurrency",
        str(args.concurrency),
        "--channels",
        str(args.channels),
        "--batch-size",
        str(args.batch_size),
    ]


@dataclass
class Measurement:
    """One client run against one target."""

    target: str
    method: str
    calls_per_sec: float
    decisions_per_sec: float
    errors: dict[str, int] = field(default_factory=dict)
    sample: dict[str, Any] = field(default_factory=dict)


def measure(args: argparse.Namespace, server: Server, method: str, duration: float) -> Measurement:
    """Run the client once; raise :class:`BenchError` if it completes nothing."""
    cmd = client_command(args, server.port, method, duration)
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=duration + CLIENT_GRACE_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"client did not finish in {duration + CLIENT_GRACE_S:.0f} s") from exc
    server.check_alive()
    lines = proc.stdout.strip().splitlines()
    try:
        data = json.loads(lines[-1]) if lines else {}
    except ValueError:
        data = {}
    if proc.returncode != 0 or "failure" in data or "calls" not in data:
        reason = data.get("failure") or f"status {proc.returncode}"
        raise BenchError(
            f"client against {server.name} {method} failed ({reason}):\n"
            f"{proc.stdout}{proc.stderr}\nserver output:\n{server.log_tail()}"
        )
    if data["calls"] == 0:
        raise BenchError(
            f"client against {server.name} {method} completed no call; "
            f"errors {data['errors']}\nserver output:\n{server.log_tail()}"
        )
    return Measurement(
        target=server.name,
        method=method,
        calls_per_sec=data["calls_per_sec"],
        decisions_per_sec=data["decisions_per_sec"],
        errors=data["errors"],
        sample=data["sample"],
    )


# ------------------------------------------------------------------------ report


@dataclass
class Summary:
    """Medians for one target and method over all rounds."""

    target: str
    method: str
    calls_per_sec: float
    decisions_per_sec: float
    errors: int
    denied_samples: int


def summarise(results: list[Measurement]) -> Summary:
    """Median calls/s and decisions/s; summed errors and denied sample answers."""
    return Summary(
        target=results[0].target,
        method=results[0].method,
        calls_per_sec=statistics.median(r.calls_per_sec for r in results),
        decisions_per_sec=statistics.median(r.decisions_per_sec for r in results),
        errors=sum(sum(r.errors.values()) for r in results),
        denied_samples=sum(not r.sample.get("allowed") for r in results),
    )


def format_table(summaries: dict[tuple[str, str], Summary]) -> str:
    """The results table, medians over the rounds."""
    header = (
        f"{'target':<8} {'method':<11} {'calls/s':>10} {'decisions/s':>12} "
        f"{'vs echo':>8} {'errors':>7}"
    )
    rows = [header, "-" * len(header)]
    for method in METHODS:
        echo = summaries[("echo", method)]
        for target in ("echo", "helios"):
            s = summaries[(target, method)]
            vs = f"{s.calls_per_sec / echo.calls_per_sec:.2f}x" if target == "helios" else ""
            rows.append(
                f"{s.target:<8} {s.method:<11} {s.calls_per_sec:>10.0f} "
                f"{s.decisions_per_sec:>12.0f} {vs:>8} {s.errors:>7}"
            )
    return "\n".join(rows)


def verdict(summaries: dict[tuple[str, str], Summary]) -> tuple[str, dict[str, Any]]:
    """The verdict line against the bars, and its machine-readable form."""
    echo_allow = summaries[("echo", "Allow")].calls_per_sec
    helios_allow = summaries[("helios", "Allow")].calls_per_sec
    helios_batch = summaries[("helios", "AllowBatch")].decisions_per_sec
    allow_ratio = helios_allow / echo_allow if echo_allow else 0.0
    batch_ratio = helios_batch / helios_allow if helios_allow else 0.0
    allow_ok = allow_ratio >= ALLOW_BAR
    batch_ok = batch_ratio >= BATCH_BAR
    passed = allow_ok and batch_ok
    line = (
        f"VERDICT: {'PASS' if passed else 'FAIL'} -- "
        f"Allow helios/echo {allow_ratio:.2f}x "
        f"(bar >= {ALLOW_BAR:g}x: {'ok' if allow_ok else 'MISSED'}); "
        f"AllowBatch decisions/s over Allow calls/s {batch_ratio:.1f}x "
        f"(bar >= {BATCH_BAR:g}x: {'ok' if batch_ok else 'MISSED'})"
    )
    return line, {
        "pass": passed,
        "allow_ratio": allow_ratio,
        "allow_bar": ALLOW_BAR,
        "allow_ok": allow_ok,
        "batch_ratio": batch_ratio,
        "batch_bar": BATCH_BAR,
        "batch_ok": batch_ok,
    }


# -------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Benchmark Helios gRPC Allow/AllowBatch against a bare purerpc echo service."
    )
    parser.add_argument("--duration", type=float, default=5, help="seconds per round (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per target (default 3)")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight (default 64)")
    parser.add_argument(
        "--channels", type=int, default=4, help="client channels/connections (default 4)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=100, help="checks per AllowBatch call (default 100)"
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter for the servers and the client (default: this one)",
    )
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write results to FILE")
    # Client mode (internal): one measurement, printed as JSON.
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, default="Allow", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.duration <= 0:
        parser.error("--duration must be > 0")
    for name in ("rounds", "concurrency", "channels", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.client and not args.target:
        parser.error("--client needs --target")
    return args


def check_prerequisites(python: str) -> None:
    """Make sure taskset, grpcio and the two pinned cores are available."""
    if shutil.which("taskset") is None:
        raise BenchError("'taskset' not found on PATH (Debian: apt-get install util-linux)")
    allowed = os.sched_getaffinity(0)
    missing = {SERVER_CPU, WRK_CPU} - allowed
    if missing:
        raise BenchError(
            f"needs CPUs {SERVER_CPU} and {WRK_CPU} (servers and client pinned apart); "
            f"this process may only use CPUs {sorted(allowed)}"
        )
    probe = subprocess.run(
        [python, "-c", "import grpc.aio, purerpc"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        raise BenchError(
            f"{python} cannot import grpcio and purerpc (pip install grpcio):\n{probe.stderr}"
        )


def run(args: argparse.Namespace) -> int:
    """Run the whole benchmark; return the exit status."""
    check_prerequisites(args.python)
    print(
        f"Helios gRPC benchmark -- nproc: {os.cpu_count()}; servers on CPU {SERVER_CPU}, "
        f"grpc.aio client on CPU {WRK_CPU}; {args.concurrency} calls in flight over "
        f"{args.channels} channel(s); AllowBatch of {args.batch_size} checks"
    )
    print(
        "Figures on a shared machine are noisy: each target runs "
        f"{args.rounds} alternating round(s) of {args.duration:g} s per method "
        "and the table quotes medians."
    )
    results: dict[tuple[str, str], list[Measurement]] = {}
    with tempfile.TemporaryDirectory(prefix="helios-grpc-bench-") as tmp:
        echo, helios = build_servers(args, Path(tmp))
        servers = (echo, helios)
        try:
            for server in servers:
                server.start()
            for server in servers:
                server.wait_ready()

            print("\nCommands:")
            for server in servers:
                print(f"  {server.name} server: {server.describe()}")
                for method in METHODS:
                    cmd = client_command(args, server.port, method, args.duration)
                    print(f"  {server.name} {method} client: {shlex.join(cmd)}")
            print()

            for method in METHODS:
                for server in servers:
                    print(f"warm-up {server.name} {method} ({WARMUP_SECONDS:g} s)...", flush=True)
                    measure(args, server, method, WARMUP_SECONDS)

            for round_no in range(1, args.rounds + 1):
                for method in METHODS:
                    for server in servers:
                        m = measure(args, server, method, args.duration)
                        results.setdefault((server.name, method), []).append(m)
                        print(
                            f"round {round_no}/{args.rounds} {server.name:<6} {method:<10} "
                            f"{m.calls_per_sec:>9.0f} calls/s {m.decisions_per_sec:>10.0f} "
                            f"decisions/s  errors {sum(m.errors.values())}"
                            + (f" {m.errors}" if m.errors else ""),
                            flush=True,
                        )
        finally:
            for server in servers:
                server.stop()

    summaries = {key: summarise(rs) for key, rs in results.items()}
    line, verdict_data = verdict(summaries)
    print(
        f"\nMedians over {args.rounds} round(s) of {args.duration:g} s, "
        f"{args.concurrency} calls in flight, {args.channels} channel(s), "
        f"AllowBatch of {args.batch_size}:"
    )
    print(format_table(summaries))
    print()
    for s in summaries.values():
        if s.errors or s.denied_samples:
            print(
                f"WARNING: {s.target} {s.method} had {s.errors} failed calls and "
                f"{s.denied_samples} denied sample answers; its figures may not "
                "measure the allowed path."
            )
    print(line)

    if args.json is not None:
        payload = {
            "nproc": os.cpu_count(),
            "duration_s": args.duration,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "channels": args.channels,
            "batch_size": args.batch_size,
            "warmup_s": WARMUP_SECONDS,
            "rounds_raw": {
                f"{target}/{method}": [asdict(m) for m in ms]
                for (target, method), ms in results.items()
            },
            "median": {f"{s.target}/{s.method}": asdict(s) for s in summaries.values()},
            "verdict": {**verdict_data, "line": line},
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run, turning harness failures into a non-zero exit."""
    args = parse_args(argv)
    if args.client:
        return client(args)
    try:
        return run(args)
    except BenchError as exc:
        print(f"grpc bench: cannot run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("grpc bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
