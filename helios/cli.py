"""The ``helios`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import trio

from helios import __version__
from helios.backends.redis.url import redact
from helios.config import ROLES, Config, load_config, setting_names
from helios.errors import ConfigError
from helios.logs import configure_logging

_DESCRIPTION = """\
Helios answers one question for API gateways and services: may tenant T spend
COST units of resource R now? Roles: `gateway` decides (HTTP on 8080, gRPC
on 9080, metrics on 2112) with the policies and keys of its store (etcd, or
the embedded file store); `control` manages tenants, policies and API keys in
that store (REST on 8081, gRPC on 9081, metrics on 2113); `all` runs both in
one process on the embedded store, needing no Redis and no etcd.

Settings come from --config FILE (TOML), then environment variables
(HELIOS_<SECTION>_<KEY>, e.g. HELIOS_HTTP_PORT), then flags; later ones win.
"""

_EPILOG = """\
examples:
  HELIOS_ALLOWED_API_KEYS=test-key HELIOS_ADMIN_API_KEYS=admin-key helios --role all
  HELIOS_ETCD_ENDPOINTS=http://etcd:2379 HELIOS_ADMIN_API_KEYS=... helios --role control
  helios --role gateway --config /etc/helios/helios.toml --policies policies.toml
  helios --role all --set http.port=9000 --set gateway.max_buckets=100000

manage a running control plane (tenants, policies, API keys):
  helios admin --help

docs: README.md (settings, API, policy file) and docs/ in the source tree.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helios",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--role", choices=ROLES, help="what this process runs (default: all)")
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file (HELIOS_CONFIG)")
    parser.add_argument(
        "--policies", metavar="FILE", help="policy file, watched (HELIOS_POLICIES_FILE)"
    )
    parser.add_argument("--mode", choices=("fast", "strong"), help="gateway consistency mode")
    parser.add_argument("--http-host", metavar="HOST", help="data-plane HTTP host")
    parser.add_argument("--http-port", metavar="PORT", help="data-plane HTTP port")
    parser.add_argument("--metrics-host", metavar="HOST", help="metrics host")
    parser.add_argument("--metrics-port", metavar="PORT", help="metrics port")
    parser.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        help="set any setting, e.g. --set http.idle_timeout_seconds=30 (repeatable)",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the effective configuration and exit"
    )
    parser.add_argument("--version", action="version", version=f"helios {__version__}")
    return parser


_FLAG_SETTINGS = {
    "role": "role",
    "policies": "policies.file",
    "mode": "gateway.mode",
    "http_host": "http.host",
    "http_port": "http.port",
    "metrics_host": "metrics.host",
    "metrics_port": "metrics.port",
}


def _overrides(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, str]]:
    """Settings given by flags, and the flag that gave each (for error messages)."""
    overrides: dict[str, str] = {}
    sources: dict[str, str] = {}
    for flag, setting in _FLAG_SETTINGS.items():
        if getattr(args, flag) is not None:
            overrides[setting] = getattr(args, flag)
            sources[setting] = "--" + flag.replace("_", "-")
    known = set(setting_names())
    for item in args.set:
        setting, sep, value = item.partition("=")
        if not sep or setting not in known:
            # The setting only: the value may be a secret.
            raise ConfigError(
                f"--set {setting!r}: expected SECTION.KEY=VALUE with a known setting"
                " (see --print-config for the list)"
            )
        overrides[setting] = value
        sources[setting] = f"--set {setting}"
    return overrides, sources


def _print_config(config: Config) -> None:
    for name in setting_names():
        section, _, key = name.rpartition(".")
        value = getattr(getattr(config, section), key) if section else config.role
        if "api_keys" in key:
            value = f"<{len(value)} keys>"
        elif "password" in key and value:
            value = "<redacted>"
        elif name == "redis.url":
            value = redact(value)
        elif name == "store.etcd_endpoints":
            value = [redact(endpoint) for endpoint in value]
        print(f"{name} = {value!r}")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["admin"]:
        from helios.admin import main as admin_main

        return admin_main(arguments[1:])
    args = _parser().parse_args(arguments)
    try:
        overrides, sources = _overrides(args)
        config = load_config(args.config, overrides=overrides, sources=sources)
    except ConfigError as error:
        print(f"helios: configuration error: {error.message}", file=sys.stderr)
        return 2
    if args.print_config:
        _print_config(config)
        return 0
    configure_logging(config.log.level, config.log.format)

    from helios.runtime import run

    log = logging.getLogger("helios")
    try:
        trio.run(run, config)
    except BaseException as raised:
        cause = _unwrap(raised)
        if isinstance(cause, KeyboardInterrupt):
            return 0
        if isinstance(cause, ConfigError):
            log.error("cannot start: %s", cause.message)
            return 2
        if isinstance(cause, OSError):
            log.error("stopped: %s", cause)
            return 1
        raise
    return 0


def _unwrap(error: BaseException) -> BaseException:
    """The single error inside nested one-member exception groups (trio's nurseries)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
