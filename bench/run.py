"""Helios benchmark (``make bench``): gateway ``/allow`` vs a bare hypercorn-trio app.

Both servers run side by side in one invocation, each pinned to core 0, while
``wrk`` (one thread, 64 keep-alive connections by default) is pinned to core 1.
Rounds alternate bare, helios, bare, helios, ... after a warm-up per server, and
the table quotes medians over the rounds, because a shared 2-core machine is
noisy.  The verdict compares against the project bars:

* throughput: helios req/s >= 10 x bare req/s;
* latency: helios p99 <= 10 ms.

Missing a bar is reported, not fatal: the exit status is 0 whenever the
benchmark could run, and non-zero only if it could not (wrk or taskset missing,
a server that does not start or dies, wrk output that cannot be parsed).

Usage::

    python bench/run.py [--duration 10] [--rounds 3] [--connections 64]
                        [--python PY] [--json FILE]

``--helios-cmd`` (hidden, for testing the harness) replaces the Helios command
line; ``{python}`` and ``{port}`` in it are substituted, e.g.::

    --helios-cmd "{python} -m hypercorn --worker-class trio \\
                  --bind 127.0.0.1:{port} bench.bare_app:app"
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
API_KEY = "bench-key"
REQUEST_PATH = "/allow?tenant=acme&resource=demo&cost=1"
HEALTH_PATH = "/health"
POLICIES = "bench/policies.toml"
SERVER_CPU = 0
WRK_CPU = 1
WARMUP_SECONDS = 2
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
RATIO_BAR = 10.0
STRONG_RATIO_BAR = 0.5
P99_BAR_MS = 10.0
DEFAULT_HELIOS_CMD = "{python} -m helios --role gateway --policies " + POLICIES
BARE_CMD = "{python} -m hypercorn --worker-class trio --bind " + HOST + ":{port} bench.bare_app:app"
# hypercorn's access log is off unless --access-logfile/--access-log is given,
# so BARE_CMD deliberately passes neither (no per-request logging cost).


class BenchError(Exception):
    """Something needed by the benchmark could not run."""


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    """Figures parsed from one ``wrk --latency`` run."""

    requests_per_sec: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx_3xx: int
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def socket_error_total(self) -> int:
        """Sum of connect, read, write and timeout socket errors."""
        return sum(self.socket_errors.values())


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_LATENCY_RE = r"^\s*{pct}%\s+([0-9.]+)(us|ms|s|m|h)\s*$"
_RPS_RE = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.M)
_REQUESTS_RE = re.compile(r"^\s*(\d+) requests in ", re.M)
_NON2XX_RE = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", re.M)
_SOCKERR_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def _latency_ms(output: str, pct: int) -> float:
    """Return the ``pct``% latency from wrk's distribution, in milliseconds."""
    match = re.search(_LATENCY_RE.format(pct=pct), output, re.M)
    if match is None:
        raise BenchError(f"wrk output has no {pct}% latency line:\n{output}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Parse the text printed by ``wrk --latency``."""
    rps = _RPS_RE.search(output)
    if rps is None:
        raise BenchError(f"wrk output has no 'Requests/sec:' line:\n{output}")
    requests = _REQUESTS_RE.search(output)
    non2xx = _NON2XX_RE.search(output)
    sockerr = _SOCKERR_RE.search(output)
    errors: dict[str, int] = {}
    if sockerr is not None:
        for name, value in zip(
            ("connect", "read", "write", "timeout"), sockerr.groups(), strict=True
        ):
            errors[name] = int(value)
    return WrkResult(
        requests_per_sec=float(rps.group(1)),
        p50_ms=_latency_ms(output, 50),
        p99_ms=_latency_ms(output, 99),
        requests=int(requests.group(1)) if requests else 0,
        non_2xx_3xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=errors,
    )


def wrk_command(port: int, duration: int, connections: int) -> list[str]:
    """The pinned wrk command line for a server on ``port``."""
    return [
        "taskset",
        "-c",
        str(WRK_CPU),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "-H",
        f"X-API-Key: {API_KEY}",
        f"http://{HOST}:{port}{REQUEST_PATH}",
    ]


def run_wrk(cmd: Sequence[str], duration: int) -> WrkResult:
    """Run wrk and parse its output; raise :class:`BenchError` if it fails."""
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=duration + 30,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish in {duration + 30} s") from exc
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with status {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return parse_wrk(proc.stdout)


# ----------------------------------------------------------------------- servers


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Server:
    """A server subprocess pinned to the server core, in its own session."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        env_extra: dict[str, str],
        log_dir: Path,
        *,
        cpu: int = SERVER_CPU,
        redis: bool = False,
    ) -> None:
        self.cpu = cpu
        # A Redis server answers PING on a plain socket instead of GET /health.
        self.redis = redis
        self.name = name
        self.argv = argv
        self.port = port
        self.env_extra = env_extra
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def command(self) -> list[str]:
        """The full, pinned command line."""
        return ["taskset", "-c", str(self.cpu), *self.argv]

    def describe(self) -> str:
        """A shell-pasteable line reproducing the server start."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env_extra.items())
        cmd = shlex.join(self.command)
        return f"(cd {shlex.quote(str(REPO_ROOT))} && {env + ' ' if env else ''}{cmd})"

    def start(self) -> None:
        """Start the process, logging stdout/stderr to a file."""
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command,
            cwd=REPO_ROOT,
            env={**os.environ, **self.env_extra},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the server printed."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise :class:`BenchError` if the process has exited."""
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            raise BenchError(
                f"{self.name} server exited with status {code}; last output:\n{self.log_tail()}"
            )

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll ``GET /health`` until it answers 200, or raise after ``timeout``."""
        url = f"http://{HOST}:{self.port}{HEALTH_PATH}"
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                if self.redis:
                    with socket.create_connection((HOST, self.port), timeout=1.0) as sock:
                        sock.sendall(b"PING\r\n")
                        if sock.recv(16).startswith(b"+PONG"):
                            return
                else:
                    with urllib.request.urlopen(url, timeout=1.0) as resp:
                        if resp.status == 200:
                            return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise BenchError(
                    f"{self.name} server not ready at {url} after {timeout:.0f} s; "
                    f"last output:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the server; SIGKILL its process group if it lingers."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                print(f"  {self.name}: no exit {timeout:.0f} s after SIGTERM, killing")
        # Reap anything left in the session we created (e.g. hypercorn workers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if self._log is not None:
            self._log.close()


def split_cmd(template: str, python: str, port: int) -> list[str]:
    """Split a command template, substituting ``{python}`` and ``{port}``."""
    return [
        part.replace("{python}", python).replace("{port}", str(port))
        for part in shlex.split(template)
    ]


# ------------------------------------------------------------------------ report


@dataclass
class Summary:
    """Medians (and error totals) for one target over all rounds."""

    target: str
    requests_per_sec: float
    p50_ms: float
    p99_ms: float
    non_2xx_3xx: int
    socket_errors: int


def summarise(target: str, results: list[WrkResult]) -> Summary:
    """Median req/s, p50 and p99; summed error counts."""
    return Summary(
        target=target,
        requests_per_sec=statistics.median(r.requests_per_sec for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        non_2xx_3xx=sum(r.non_2xx_3xx for r in results),
        socket_errors=sum(r.socket_error_total for r in results),
    )


def _ratio(a: Summary, b: Summary) -> float:
    return a.requests_per_sec / b.requests_per_sec if b.requests_per_sec else 0.0


def format_table(bare: Summary, helios: Summary, strong: Summary | None = None) -> str:
    """The results table, medians over the rounds."""
    header = (
        f"{'target':<8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'vs bare':>8} {'vs helios':>9} {'non-2xx':>8} {'sock err':>8}"
    )
    rows = [header, "-" * len(header)]
    cells = [(bare, "", ""), (helios, f"{_ratio(helios, bare):.2f}x", "")]
    if strong is not None:
        cells.append((strong, f"{_ratio(strong, bare):.2f}x", f"{_ratio(strong, helios):.2f}x"))
    for summary, vs_bare, vs_helios in cells:
        rows.append(
            f"{summary.target:<8} {summary.requests_per_sec:>10.0f} "
            f"{summary.p50_ms:>8.2f} {summary.p99_ms:>8.2f} {vs_bare:>8} {vs_helios:>9} "
            f"{summary.non_2xx_3xx:>8} {summary.socket_errors:>8}"
        )
    return "\n".join(rows)


def verdict(
    bare: Summary, helios: Summary, strong: Summary | None = None
) -> tuple[str, dict[str, Any]]:
    """The verdict line against the bars, and its machine-readable form."""
    ratio = _ratio(helios, bare)
    ratio_ok = ratio >= RATIO_BAR
    p99_ok = helios.p99_ms <= P99_BAR_MS
    strong_ratio = _ratio(strong, helios) if strong is not None else None
    strong_ok = strong_ratio is None or strong_ratio >= STRONG_RATIO_BAR
    passed = ratio_ok and p99_ok and strong_ok
    line = (
        f"VERDICT: {'PASS' if passed else 'FAIL'} -- "
        f"throughput helios/bare {ratio:.2f}x "
        f"(bar >= {RATIO_BAR:g}x: {'ok' if ratio_ok else 'MISSED'}); "
        f"helios p99 {helios.p99_ms:.2f} ms "
        f"(bar <= {P99_BAR_MS:g} ms: {'ok' if p99_ok else 'MISSED'})"
    )
    if strong_ratio is not None:
        line += (
            f"; strong/helios {strong_ratio:.2f}x "
            f"(bar >= {STRONG_RATIO_BAR:g}x: {'ok' if strong_ok else 'MISSED'})"
        )
    return line, {
        "strong_ratio": strong_ratio,
        "strong_ratio_bar": STRONG_RATIO_BAR,
        "strong_ok": strong_ok,
        "pass": passed,
        "ratio": ratio,
        "ratio_bar": RATIO_BAR,
        "ratio_ok": ratio_ok,
        "helios_p99_ms": helios.p99_ms,
        "p99_bar_ms": P99_BAR_MS,
        "p99_ok": p99_ok,
    }


# -------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Benchmark Helios /allow against a bare hypercorn-trio app."
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per target (default 3)")
    parser.add_argument(
        "--connections",
        type=int,
        default=64,
        help="wrk keep-alive connections (default 64)",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter used to start the servers (default: this one)",
    )
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write results to FILE")
    parser.add_argument(
        "--no-strong",
        action="store_true",
        help="skip the STRONG-mode target (which needs redis-server)",
    )
    parser.add_argument("--helios-cmd", default=DEFAULT_HELIOS_CMD, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("duration", "rounds", "connections"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    return args


def check_prerequisites() -> None:
    """Make sure wrk, taskset and the two pinned cores are available."""
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            raise BenchError(f"'{tool}' not found on PATH (Debian: apt-get install {tool})")
    allowed = os.sched_getaffinity(0)
    missing = {SERVER_CPU, WRK_CPU} - allowed
    if missing:
        raise BenchError(
            f"needs CPUs {SERVER_CPU} and {WRK_CPU} (servers and wrk pinned apart); "
            f"this process may only use CPUs {sorted(allowed)}"
        )


def build_strong(args: argparse.Namespace, log_dir: Path) -> tuple[Server, Server]:
    """A Redis server (on wrk's core: the server core is Helios's) and Helios in STRONG mode."""
    redis_port = free_port()
    redis = Server(
        "redis",
        [
            "redis-server",
            "--port",
            str(redis_port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        redis_port,
        {},
        log_dir,
        cpu=WRK_CPU,
        redis=True,
    )
    http_port = free_port()
    env = {
        **_helios_env(http_port),
        "GATEWAY_CONSISTENCY_MODE": "strong",
        "HELIOS_REDIS_URL": f"redis://{HOST}:{redis_port}/0",
    }
    strong = Server(
        "strong", split_cmd(args.helios_cmd, args.python, http_port), http_port, env, log_dir
    )
    return redis, strong


def _helios_env(http_port: int) -> dict[str, str]:
    return {
        "HELIOS_ALLOWED_API_KEYS": API_KEY,
        "HELIOS_HTTP_HOST": HOST,
        "HELIOS_HTTP_PORT": str(http_port),
        "HELIOS_METRICS_HOST": HOST,
        "HELIOS_METRICS_PORT": str(free_port()),
        "HELIOS_GRPC_PORT": str(free_port()),
        "HELIOS_LOG_LEVEL": "warning",
    }


def build_servers(args: argparse.Namespace, log_dir: Path) -> tuple[Server, Server]:
    """The bare and Helios servers, on fresh free ports (not yet started)."""
    bare_port = free_port()
    bare = Server("bare", split_cmd(BARE_CMD, args.python, bare_port), bare_port, {}, log_dir)
    http_port = free_port()
    helios_env = _helios_env(http_port)
    helios = Server(
        "helios",
        split_cmd(args.helios_cmd, args.python, http_port),
        http_port,
        helios_env,
        log_dir,
    )
    return bare, helios


def run(args: argparse.Namespace) -> int:
    """Run the whole benchmark; return the exit status."""
    check_prerequisites()
    nproc = os.cpu_count() or 0
    print(f"Helios benchmark -- nproc: {nproc}; servers on CPU {SERVER_CPU}, wrk on CPU {WRK_CPU}")
    print(
        "Figures on a shared machine are noisy: each target runs "
        f"{args.rounds} alternating round(s) of {args.duration} s "
        "and the table quotes medians."
    )
    strong_wanted = not args.no_strong and shutil.which("redis-server") is not None
    if not args.no_strong and not strong_wanted:
        print("redis-server not found: the STRONG-mode target is skipped")
    results: dict[str, list[WrkResult]] = {"bare": [], "helios": []}
    with tempfile.TemporaryDirectory(prefix="helios-bench-") as tmp:
        bare, helios = build_servers(args, Path(tmp))
        servers: tuple[Server, ...] = (bare, helios)
        helpers: tuple[Server, ...] = ()
        if strong_wanted:
            redis, strong = build_strong(args, Path(tmp))
            servers = (*servers, strong)
            helpers = (redis,)
            results["strong"] = []
        try:
            for server in (*helpers, *servers):
                server.start()
            for server in (*helpers, *servers):
                server.wait_ready()

            print("\nCommands:")
            for server in helpers:
                print(f"  {server.name} server: {server.describe()}")
            for server in servers:
                print(f"  {server.name} server: {server.describe()}")
                cmd = wrk_command(server.port, args.duration, args.connections)
                print(f"  {server.name} wrk:    {shlex.join(cmd)}")
            print()

            for server in servers:
                print(f"warm-up {server.name} ({WARMUP_SECONDS} s)...", flush=True)
                run_wrk(
                    wrk_command(server.port, WARMUP_SECONDS, args.connections),
                    WARMUP_SECONDS,
                )
                server.check_alive()

            for round_no in range(1, args.rounds + 1):
                for server in servers:
                    cmd = wrk_command(server.port, args.duration, args.connections)
                    result = run_wrk(cmd, args.duration)
                    server.check_alive()
                    results[server.name].append(result)
                    print(
                        f"round {round_no}/{args.rounds} {server.name:<6} "
                        f"{result.requests_per_sec:>10.0f} req/s  "
                        f"p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms  "
                        f"non-2xx {result.non_2xx_3xx}  "
                        f"socket errors {result.socket_error_total}",
                        flush=True,
                    )
        finally:
            for server in (*servers, *helpers):
                server.stop()

    bare_sum = summarise("bare", results["bare"])
    helios_sum = summarise("helios", results["helios"])
    strong_sum = summarise("strong", results["strong"]) if "strong" in results else None
    line, verdict_data = verdict(bare_sum, helios_sum, strong_sum)
    print(
        f"\nMedians over {args.rounds} round(s) of {args.duration} s, "
        f"{args.connections} connections:"
    )
    print(format_table(bare_sum, helios_sum, strong_sum))
    print()
    summaries = [bare_sum, helios_sum] + ([strong_sum] if strong_sum else [])
    for summary in summaries:
        if summary.non_2xx_3xx or summary.socket_errors:
            print(
                f"WARNING: {summary.target} had {summary.non_2xx_3xx} non-2xx/3xx "
                f"responses and {summary.socket_errors} socket errors; its figures "
                "may not measure the allowed path."
            )
    print(line)

    if args.json is not None:
        payload = {
            "nproc": nproc,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "connections": args.connections,
            "warmup_s": WARMUP_SECONDS,
            "commands": {
                s.name: {
                    "server": s.describe(),
                    "wrk": shlex.join(wrk_command(s.port, args.duration, args.connections)),
                }
                for s in servers
            },
            "rounds_raw": {name: [asdict(r) for r in rs] for name, rs in results.items()},
            "median": {s.target: asdict(s) for s in summaries},
            "verdict": {**verdict_data, "line": line},
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run, turning harness failures into a non-zero exit."""
    args = parse_args(argv)
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench: cannot run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
