"""The one typed configuration of a Helios process.

Settings come from three places, later ones overriding earlier ones: a TOML
file (``--config``), environment variables, and command-line flags. Every
setting ``section.key`` has the environment variable ``HELIOS_SECTION_KEY``
(for instance ``http.port`` is ``HELIOS_HTTP_PORT``); a few settings also
answer to established names listed in ``ALIASES``. Unknown keys and unknown
``HELIOS_*`` variables are errors, as are values of the wrong type or range:
a typo must never be silently ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from helios.errors import ConfigError

ROLES = ("gateway", "control", "all")
MODES = ("fast", "strong")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
# Most tenants exported by name: each costs Prometheus a few series.
MAX_TENANT_SERIES = 1000
# Largest grpc.max_message_bytes: purerpc's own bound. Its stream window, twice
# that, must hold a whole message: it is handed back only once a message is read.
MAX_GRPC_MESSAGE_BYTES = 32 * 1024 * 1024


@dataclass(slots=True)
class GatewaySettings:
    # fast: buckets in this process's memory; strong: buckets in Redis.
    mode: str = "fast"
    # Upper bound of buckets held in memory (FAST mode, and STRONG's local fallback).
    max_buckets: int = 1_000_000
    # Global API keys, allowed to act for any tenant. Comma-separated in the environment.
    allowed_api_keys: list[str] = field(default_factory=list)
    # Serve decisions without any API key. Only for trusted networks.
    auth_disabled: bool = False
    # Seconds to let requests in flight finish after SIGTERM / SIGINT.
    shutdown_grace_seconds: float = 5.0
    # Most checks in one batch request.
    max_batch_checks: int = 1000


@dataclass(slots=True)
class RedisSettings:
    # redis://[user:password@]host:port/db, rediss:// (TLS), redis+cluster://h1:p1,h2:p2,
    # or redis+sentinel://h1:p1,h2:p2/master-name. Used in STRONG mode.
    url: str = "redis://127.0.0.1:6379/0"
    # How long one decision may wait for Redis before the failure mode applies.
    timeout_ms: int = 50
    # Connections per Redis server; commands are pipelined over them.
    pool_size: int = 4
    # Every key Helios writes starts with this.
    key_prefix: str = "helios"
    # Consecutive failures that open the circuit, and how long it stays open
    # before a trial call.
    breaker_failures: int = 5
    breaker_cooldown_seconds: float = 1.0


@dataclass(slots=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    tls_enabled: bool = False
    cert_path: str = ""
    key_path: str = ""
    max_request_line_bytes: int = 8192
    max_header_bytes: int = 16384
    max_headers: int = 100
    max_body_bytes: int = 1_048_576
    request_timeout_seconds: float = 10.0
    idle_timeout_seconds: float = 60.0


@dataclass(slots=True)
class GrpcSettings:
    # The Helios gRPC API and Envoy's rate limit service (RLS v3).
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9080
    # Largest request message, as sent and once inflated (gRPC's usual 4 MiB);
    # a larger one is answered RESOURCE_EXHAUSTED.
    max_message_bytes: int = 4_194_304


@dataclass(slots=True)
class MetricsSettings:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 2112
    # Export decisions by tenant (helios_tenant_rate_limits_total): the busiest
    # max_tenants tenants by name, every other tenant summed as "other".
    tenant_labels: bool = False
    max_tenants: int = 20


@dataclass(slots=True)
class ControlSettings:
    http_host: str = "127.0.0.1"
    http_port: int = 8081
    grpc_enabled: bool = True
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 9081
    metrics_enabled: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 2113
    # Keys that may use the control plane. Comma-separated in the environment.
    admin_api_keys: list[str] = field(default_factory=list)
    # HTTPS for the REST API and TLS for the gRPC API of the control plane.
    tls_enabled: bool = False
    cert_path: str = ""
    key_path: str = ""


@dataclass(slots=True)
class StoreSettings:
    # etcd endpoints (http://host:2379 or https://...), comma-separated in the
    # environment. Empty: the embedded store (store.file).
    etcd_endpoints: list[str] = field(default_factory=list)
    # etcd user and password, when etcd's authentication is on.
    etcd_username: str = ""
    etcd_password: str = ""
    # TLS to etcd (https:// endpoints): the CA that signed etcd's certificate
    # (empty: the system's CAs), and a client certificate and key when etcd
    # asks for one.
    etcd_ca_path: str = ""
    etcd_cert_path: str = ""
    etcd_key_path: str = ""
    # Every key Helios keeps in etcd starts with this.
    prefix: str = "/helios/"
    # The embedded store: one JSON file, written atomically, read at start.
    file: str = "helios-store.json"
    # How long one call to the store may take.
    timeout_ms: int = 2000
    # A gateway's registration disappears this long after the gateway does.
    lease_ttl_seconds: int = 10


@dataclass(slots=True)
class PoliciesSettings:
    # The embedded policy file; empty means the built-in demo policies.
    file: str = ""


@dataclass(slots=True)
class LogSettings:
    level: str = "info"
    format: str = "text"


@dataclass(slots=True)
class Config:
    role: str = "all"
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    grpc: GrpcSettings = field(default_factory=GrpcSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    control: ControlSettings = field(default_factory=ControlSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    policies: PoliciesSettings = field(default_factory=PoliciesSettings)
    log: LogSettings = field(default_factory=LogSettings)

    def validate(self) -> None:
        """Check the constraints that span types (choices, ranges, pairs)."""
        _choice("role", self.role, ROLES)
        _choice("gateway.mode", self.gateway.mode, MODES)
        _choice("log.format", self.log.format, LOG_FORMATS)
        _choice("log.level", self.log.level, LOG_LEVELS)
        for name in (
            "http.port",
            "grpc.port",
            "metrics.port",
            "control.http_port",
            "control.grpc_port",
            "control.metrics_port",
        ):
            port = _get(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name} must be a port from 0 to 65535, got {port}")
        if not 1 <= self.metrics.max_tenants <= MAX_TENANT_SERIES:
            raise ConfigError(
                f"metrics.max_tenants must be from 1 to {MAX_TENANT_SERIES},"
                f" got {self.metrics.max_tenants}"
            )
        if not 1 <= self.grpc.max_message_bytes <= MAX_GRPC_MESSAGE_BYTES:
            raise ConfigError(
                f"grpc.max_message_bytes must be from 1 to {MAX_GRPC_MESSAGE_BYTES},"
                f" got {self.grpc.max_message_bytes}"
            )
        if "{" in self.redis.key_prefix or "}" in self.redis.key_prefix:
            raise ConfigError("redis.key_prefix may not contain braces")
        for name in (
            "redis.timeout_ms",
            "redis.pool_size",
            "store.timeout_ms",
            "store.lease_ttl_seconds",
            "redis.breaker_failures",
            "gateway.max_buckets",
            "gateway.max_batch_checks",
            "http.max_request_line_bytes",
            "http.max_header_bytes",
            "http.max_headers",
            "http.max_body_bytes",
        ):
            if _get(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {_get(self, name)}")
        for name in (
            "gateway.shutdown_grace_seconds",
            "http.request_timeout_seconds",
            "http.idle_timeout_seconds",
            "redis.breaker_cooldown_seconds",
        ):
            if not _get(self, name) > 0:
                raise ConfigError(f"{name} must be greater than 0, got {_get(self, name)}")
        if self.http.tls_enabled and not (self.http.cert_path and self.http.key_path):
            raise ConfigError(
                "http.tls_enabled needs http.cert_path and http.key_path"
                " (GATEWAY_CERT_PATH, GATEWAY_KEY_PATH)"
            )
        if self.control.tls_enabled and not (self.control.cert_path and self.control.key_path):
            raise ConfigError("control.tls_enabled needs control.cert_path and control.key_path")
        for name in ("gateway.allowed_api_keys", "control.admin_api_keys"):
            if any(not key for key in _get(self, name)):
                raise ConfigError(f"{name} must not hold an empty key")
        for endpoint in self.store.etcd_endpoints:
            if not endpoint.startswith(("http://", "https://")):
                raise ConfigError(
                    f"store.etcd_endpoints must be http:// or https:// URLs, got {endpoint!r}"
                )
        if bool(self.store.etcd_cert_path) != bool(self.store.etcd_key_path):
            raise ConfigError("store.etcd_cert_path and store.etcd_key_path go together")
        if not self.store.prefix.startswith("/"):
            raise ConfigError(f"store.prefix must start with '/', got {self.store.prefix!r}")


# Established environment names, kept working beside the HELIOS_SECTION_KEY ones.
ALIASES: dict[str, str] = {
    "HELIOS_ALLOWED_API_KEYS": "gateway.allowed_api_keys",
    "HELIOS_ADMIN_API_KEYS": "control.admin_api_keys",
    "HELIOS_ETCD_ENDPOINTS": "store.etcd_endpoints",
    "GATEWAY_CONSISTENCY_MODE": "gateway.mode",
    "GATEWAY_TLS_ENABLED": "http.tls_enabled",
    "GATEWAY_CERT_PATH": "http.cert_path",
    "GATEWAY_KEY_PATH": "http.key_path",
    "HELIOS_POLICY_FILE": "policies.file",
    "HELIOS_LOG_FORMAT": "log.format",
    "HELIOS_LOG_LEVEL": "log.level",
    "HELIOS_ROLE": "role",
}

# HELIOS_* variables that are not settings of this process: read by the
# command line itself, by client tools, or by the load scripts.
_NOT_SETTINGS = frozenset(
    {"HELIOS_CONFIG", "HELIOS_API_KEY", "HELIOS_ADMIN_KEY", "HELIOS_CONTROL_URL"}
)
_NOT_SETTINGS_PREFIX = "HELIOS_LOADTEST_"


def _sections() -> dict[str, type]:
    hints = get_type_hints(Config)
    return {
        name: hint
        for name, hint in hints.items()
        if isinstance(hint, type) and dataclasses.is_dataclass(hint)
    }


def setting_names() -> list[str]:
    """Every setting as ``section.key`` (``role`` stands alone)."""
    names = ["role"]
    for section, cls in _sections().items():
        names.extend(f"{section}.{f.name}" for f in dataclasses.fields(cls))
    return names


def env_name(setting: str) -> str:
    return "HELIOS_" + setting.replace(".", "_").upper()


def load_config(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
    sources: Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration from a file, the environment and flag overrides.

    ``overrides`` maps ``section.key`` to the text given on the command line;
    ``sources`` maps a setting to the flag that gave it, for error messages.
    """
    environ = os.environ if environ is None else environ
    config = Config()
    path = path or environ.get("HELIOS_CONFIG") or None
    if path:
        _apply_file(config, Path(path))
    _apply_environment(config, environ)
    for setting, text in (overrides or {}).items():
        source = (sources or {}).get(setting, f"--set {setting}")
        _set(config, setting, text, source=source)
    config.validate()
    return config


def _apply_file(config: Config, path: Path) -> None:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests arrays or tables too deeply") from None
    sections = _sections()
    for key, value in data.items():
        if key == "role":
            _set(config, "role", value, source=str(path), typed=True)
            continue
        if key not in sections:
            raise ConfigError(f"{path}: unknown setting {key!r}")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: [{key}] must be a table")
        for inner, inner_value in value.items():
            _set(config, f"{key}.{inner}", inner_value, source=str(path), typed=True)


def _apply_environment(config: Config, environ: Mapping[str, str]) -> None:
    canonical = {env_name(name): name for name in setting_names()}
    for variable in environ:
        if (
            variable.startswith("HELIOS_")
            and variable not in canonical
            and variable not in ALIASES
            and variable not in _NOT_SETTINGS
            and not variable.startswith(_NOT_SETTINGS_PREFIX)
        ):
            raise ConfigError(f"unknown environment variable {variable}")
    for alias, setting in ALIASES.items():
        name = env_name(setting)
        both = alias != name and alias in environ and name in environ
        if both and environ[alias] != environ[name]:
            raise ConfigError(f"both {alias} and {name} are set, to different values; set only one")
    for variable, setting in [*ALIASES.items(), *canonical.items()]:
        if variable in environ:
            _set(config, setting, environ[variable], source=variable)


def _set(config: Config, setting: str, value: object, *, source: str, typed: bool = False) -> None:
    section_name, _, key = setting.rpartition(".")
    target: Any = getattr(config, section_name) if section_name else config
    hints = get_type_hints(type(target))
    if key not in hints or (section_name and section_name not in _sections()):
        raise ConfigError(f"{source}: unknown setting {setting!r}")
    setattr(target, key, _convert(value, hints[key], setting, source, typed))


def _convert(value: object, hint: Any, setting: str, source: str, typed: bool) -> Any:
    """``value`` as the setting's type.

    Text (from the environment or a flag) is parsed; a ``typed`` value (from
    the TOML file) must already have the right type: ``port = "8080"`` is a
    mistake there.
    """
    where = f"{setting} (from {source})"
    # Never echo what may be a secret.
    last = setting.rsplit(".", 1)[-1]
    secret = ("key" in last and "path" not in last) or "password" in last
    shown = "<redacted>" if secret else repr(value)
    text = value.strip() if isinstance(value, str) and not typed else None
    if hint is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in ("true", "1", "yes", "on"):
            return True
        if text is not None and text.lower() in ("false", "0", "no", "off", ""):
            return False
        raise ConfigError(f"{where} must be true or false, got {shown}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text is not None and text.isascii() and text.isdigit():
            return int(text)
        raise ConfigError(f"{where} must be a whole number, got {shown}")
    if hint is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif text is not None:
            with contextlib.suppress(ValueError):
                number = float(text)
        if number is not None and math.isfinite(number):
            return number
        raise ConfigError(f"{where} must be a finite number, got {shown}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {shown}")
    # list[str]: a TOML array, or comma-separated text.
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    if text is not None:
        return [item.strip() for item in text.split(",") if item.strip()]
    raise ConfigError(f"{where} must be a list of strings, got {shown}")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _get(config: Config, setting: str) -> Any:
    section, _, key = setting.rpartition(".")
    return getattr(getattr(config, section), key)


def describe_settings() -> str:
    """A table of every setting, its environment variable and default (for docs)."""
    defaults = Config()
    lines = []
    for name in setting_names():
        aliases = [alias for alias, target in ALIASES.items() if target == name]
        value = _get(defaults, name) if "." in name else defaults.role
        lines.append(f"{name}\t{env_name(name)}\t{', '.join(aliases)}\t{value!r}")
    return "\n".join(lines)
