"""What tracing costs the hot path (``make bench``): FAST ``/allow``, tracing off vs on.

Two gateways run side by side, each pinned to core 0: one without any
``OTEL_*`` variable (tracing off), one exporting to a local OTLP receiver
that discards what it gets, with the default sampler
(``parentbased_traceidratio``, ratio 0.01). ``wrk`` and the receiver run on
core 1. Rounds alternate off, on, off, on, ... after a warm-up each, and the
table quotes medians; then the ratio on/off of the median throughputs.
Requests carry no ``traceparent``, so each one is a root that is sampled with
the ratio's probability.

A second, quieter figure follows: the HTTP handler's own time per request in
this process (no sockets), with tracing off, on at the ratio, and on with
every request sampled (spans go to an exporter that drops them).

Usage::

    python bench/tracing.py [--duration 10] [--rounds 3] [--connections 64]
                            [--ratio 0.01] [--python PY]

``--receiver PORT`` (internal) runs the discarding OTLP receiver itself.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import (
    DEFAULT_HELIOS_CMD,
    HOST,
    WARMUP_SECONDS,
    WRK_CPU,
    BenchError,
    Server,
    WrkResult,
    _helios_env,
    check_prerequisites,
    free_port,
    run_wrk,
    split_cmd,
    summarise,
    wrk_command,
)


class _Discard(BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP exports and drops them; ``GET /health`` for readiness."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_receiver(port: int) -> None:
    ThreadingHTTPServer((HOST, port), _Discard).serve_forever()


def handler_cost(ratio: float, calls: int = 50_000, passes: int = 5) -> dict[str, float]:
    """Nanoseconds per ``/allow`` in the handler: tracing off, on at ``ratio``, on for all."""
    import trio
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from bench.core import _catch_all, _gateway
    from helios.gateway.http_api import HttpApi
    from helios.gateway.metrics import GatewayMetrics
    from helios.server.http import Request
    from helios.tracing import Tracing, TracingSettings

    class Drop(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    request = Request()
    request.method = "GET"
    request.path = "/allow"
    request.query = "tenant=acme&resource=demo&cost=1"
    request.headers = [(b"host", b"bench"), (b"x-api-key", b"k")]

    def handler(sampled: float | None) -> tuple[object, Tracing | None]:
        tracing = None
        if sampled is not None:
            settings = TracingSettings(
                "bench", f"http://{HOST}:9/v1/traces", "parentbased_traceidratio", sampled
            )
            tracing = Tracing(settings, Drop())
        api = HttpApi(_gateway(_catch_all(), 1000), GatewayMetrics(), max_batch_checks=10)
        api.tracing = tracing
        return (api if tracing is None else api.traced), tracing

    # Off and on at the ratio alternate, pass by pass, so that both see the
    # same machine; every request sampled comes last (its export thread works on).
    handlers = {
        "off": handler(None),
        f"on, ratio {ratio:g}": handler(ratio),
        "on, all": handler(1.0),
    }

    async def run() -> dict[str, float]:
        timings: dict[str, list[float]] = {name: [] for name in handlers}
        for group in (list(handlers)[:2], list(handlers)[2:]):
            for round_no in range(passes + 1):
                for name in group:
                    serve = handlers[name][0]
                    started = time.perf_counter_ns()
                    for _ in range(calls):
                        await serve(request)  # type: ignore[operator]
                    if round_no:  # the first round warms up
                        timings[name].append((time.perf_counter_ns() - started) / calls)
        return {name: statistics.median(values) for name, values in timings.items()}

    try:
        return trio.run(run)
    finally:
        for _, tracing in handlers.values():
            if tracing is not None:
                tracing.shutdown()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per target")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--ratio", default="0.01", help="OTEL_TRACES_SAMPLER_ARG when on")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the servers")
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    check_prerequisites()
    print(
        "Tracing cost -- FAST /allow, tracing off vs on (parentbased_traceidratio,"
        f" ratio {args.ratio}); gateways on CPU 0, wrk and the OTLP receiver on CPU {WRK_CPU};"
        f" {args.rounds} alternating round(s) of {args.duration} s, medians."
    )
    results: dict[str, list[WrkResult]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="helios-bench-tracing-") as tmp:
        log_dir = Path(tmp)
        receiver_port = free_port()
        receiver = Server(
            "receiver",
            [args.python, str(Path(__file__).resolve()), "--receiver", str(receiver_port)],
            receiver_port,
            {},
            log_dir,
            cpu=WRK_CPU,
        )
        servers = []
        for name in ("off", "on"):
            port = free_port()
            env = _helios_env(port)
            if name == "on":
                env.update(
                    OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{HOST}:{receiver_port}",
                    OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                    OTEL_TRACES_SAMPLER_ARG=args.ratio,
                )
            servers.append(
                Server(name, split_cmd(DEFAULT_HELIOS_CMD, args.python, port), port, env, log_dir)
            )
        try:
            for server in (receiver, *servers):
                server.start()
            for server in (receiver, *servers):
                server.wait_ready()
            for server in servers:
                print(f"  {server.name}: {server.describe()}")
            wrk = wrk_command(servers[0].port, args.duration, args.connections)
            print(f"  wrk: {shlex.join(wrk)}")
            for server in servers:
                run_wrk(wrk_command(server.port, WARMUP_SECONDS, args.connections), WARMUP_SECONDS)
            for round_no in range(1, args.rounds + 1):
                for server in servers:
                    result = run_wrk(
                        wrk_command(server.port, args.duration, args.connections), args.duration
                    )
                    server.check_alive()
                    results[server.name].append(result)
                    print(
                        f"round {round_no}/{args.rounds} tracing {server.name:<3}"
                        f" {result.requests_per_sec:>10.0f} req/s  p50 {result.p50_ms:.2f} ms"
                        f"  p99 {result.p99_ms:.2f} ms  non-2xx {result.non_2xx_3xx}",
                        flush=True,
                    )
        finally:
            for server in (*servers, receiver):
                server.stop()

    off, on = summarise("off", results["off"]), summarise("on", results["on"])
    print(f"\n{'tracing':<8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for summary in (off, on):
        print(
            f"{summary.target:<8} {summary.requests_per_sec:>10.0f}"
            f" {summary.p50_ms:>8.2f} {summary.p99_ms:>8.2f}"
        )
    ratio = on.requests_per_sec / off.requests_per_sec if off.requests_per_sec else 0.0
    print(f"on/off throughput: {ratio:.3f} ({(1 - ratio) * 100:+.1f}% cost)")

    print("\nHTTP handler alone, per /allow (median of 5 passes of 50,000):")
    costs = handler_cost(float(args.ratio))
    for name, nanoseconds in costs.items():
        extra = nanoseconds - costs["off"]
        print(f"  tracing {name:<16} {nanoseconds / 1000:6.2f} us  ({extra / 1000:+.2f} us)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.receiver is not None:
        serve_receiver(args.receiver)
        return 0
    try:
        return run(args)
    except BenchError as error:
        print(f"bench/tracing.py: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
