"""Redis URLs: which servers to reach and how.

The forms Helios accepts::

    redis://[[username]:password@]host[:port][/db]        one server (port 6379, db 0)
    rediss://[[username]:password@]host[:port][/db]       the same over TLS
    redis://host:port?cluster=true                        a cluster, through one seed node
    redis+cluster://[[username]:password@]host1:port1,host2:port2
                                                          a cluster, through several seeds
    rediss+cluster://...                                  a cluster over TLS
    redis+sentinel://[[username]:password@]host1:26379,host2:26379/service[/db]
                                                          the master of ``service``, as the
                                                          sentinels name it (port 26379)
    rediss+sentinel://...                                 the same over TLS

Credentials in the URL are the data servers' (``AUTH``); user names and
passwords may be percent-encoded. Sentinels that require a password of their
own take it from the query: ``?sentinel_password=...&sentinel_username=...``.
A cluster has only database 0.

TLS takes these query parameters: ``ssl_cert_reqs`` (``required``, the default,
``optional`` or ``none``), ``ssl_ca_certs`` (a PEM file of trusted
certificates; default: the system's), ``ssl_check_hostname`` (``true`` unless
``ssl_cert_reqs=none``), and ``ssl_certfile`` / ``ssl_keyfile`` for a client
certificate. Any other query parameter is an error that names it.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import redis.connection

from helios.backends.redis.connection import ConnectionSettings
from helios.backends.redis.protocol import Address
from helios.errors import ConfigError

# redis-py's parser: user name, password, host, port, database and query of a
# one-server URL, percent-decoded. It carries no annotations.
_parse_url: Callable[[str], dict[str, Any]] = redis.connection.parse_url

REDIS_PORT = 6379
SENTINEL_PORT = 26379

_TLS_PARAMETERS = frozenset(
    {"ssl_cert_reqs", "ssl_ca_certs", "ssl_check_hostname", "ssl_certfile", "ssl_keyfile"}
)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_PASSWORD = re.compile(r"(//[^@/?#]*?:)[^@/?#]*@")

Kind = Literal["standalone", "cluster", "sentinel"]


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a Redis URL names: the kind of deployment, its servers and the settings."""

    kind: Kind
    #: The server; the cluster's seed nodes; or the sentinels.
    addresses: tuple[Address, ...]
    settings: ConnectionSettings = field(default_factory=ConnectionSettings)
    #: The name of the master the sentinels watch (sentinel only).
    service_name: str | None = None
    #: How to talk to the sentinels (sentinel only).
    sentinel_settings: ConnectionSettings | None = None


def redact(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    redacted = _PASSWORD.sub(r"\1***@", url)
    # A password may also come as a query parameter, rightly or by mistake.
    return re.sub(r"((?:^|[?&])(?:sentinel_)?password=)[^&#]*", r"\1***", redacted)


def parse_redis_url(url: str) -> RedisTarget:
    """Parse one of the URL forms in this module's docstring.

    Raises :class:`~helios.errors.ConfigError` naming what is wrong; the message
    never repeats a password.
    """
    scheme, separator, _ = url.partition("://")
    if not separator:
        raise ConfigError(f"a redis URL starts with redis:// or rediss://, got {redact(url)!r}")
    base, _, topology = scheme.lower().partition("+")
    if base not in ("redis", "rediss") or topology not in ("", "cluster", "sentinel"):
        raise ConfigError(
            f"unsupported redis URL scheme {scheme!r}: use redis, rediss, redis+cluster,"
            " rediss+cluster, redis+sentinel or rediss+sentinel"
        )
    try:
        parts = urlsplit(url)
    except ValueError as error:
        raise ConfigError(f"invalid redis URL {redact(url)!r}: {error}") from None
    userinfo, _, hosts = parts.netloc.rpartition("@")
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}

    if topology == "" and _flag(query.pop("cluster", "false"), "cluster"):
        topology = "cluster"
    allowed = {"db"} if topology == "" else set()
    if topology == "sentinel":
        allowed |= {"sentinel_username", "sentinel_password"}
    if base == "rediss":
        allowed |= _TLS_PARAMETERS
    for name in query:
        if name not in allowed:
            raise ConfigError(f"unknown parameter {name!r} in redis URL {redact(url)!r}")
    ssl_context = _tls_context(query) if base == "rediss" else None

    default_port = SENTINEL_PORT if topology == "sentinel" else REDIS_PORT
    addresses = tuple(_address(host, default_port, url) for host in hosts.split(","))
    path = parts.path
    service_name: str | None = None
    if topology == "sentinel":
        service_name, _, path = path.lstrip("/").partition("/")
        if not service_name:
            raise ConfigError(
                f"a redis+sentinel URL names the master's service after the hosts,"
                f" e.g. redis+sentinel://host:26379/mymaster; got {redact(url)!r}"
            )
        path = "/" + path
    if path.strip("/") and not path.strip("/").isdigit():
        raise ConfigError(f"the database in a redis URL is a number, got {path.strip('/')!r}")

    # redis-py decodes the credentials, the database and the query of a
    # one-server URL; the host list was taken apart above.
    single = f"{base}://{userinfo + '@' if userinfo else ''}{hosts.split(',')[0]}{path}"
    if "db" in query:
        single += f"?db={query['db']}"
    try:
        parsed = _parse_url(single)
    except ValueError as error:
        raise ConfigError(f"invalid redis URL {redact(url)!r}: {error}") from None
    db = int(parsed.get("db", 0))
    if topology == "cluster" and db != 0:
        raise ConfigError(f"a redis cluster has only database 0, got {db}")
    settings = ConnectionSettings(
        username=parsed.get("username"),
        password=parsed.get("password"),
        db=db,
        ssl_context=ssl_context,
    )
    if topology == "":
        if len(addresses) > 1:
            raise ConfigError(
                "a redis:// URL names one server; use redis+cluster:// or"
                f" redis+sentinel:// for several, got {redact(url)!r}"
            )
        return RedisTarget("standalone", addresses, settings)
    if topology == "cluster":
        return RedisTarget("cluster", addresses, settings)
    sentinel_settings = ConnectionSettings(
        username=query.get("sentinel_username"),
        password=query.get("sentinel_password"),
        ssl_context=ssl_context,
    )
    return RedisTarget("sentinel", addresses, settings, service_name, sentinel_settings)


def _address(host: str, default_port: int, url: str) -> Address:
    try:
        parts = urlsplit(f"//{host}")
        port = parts.port
        hostname = parts.hostname
    except ValueError:
        hostname = None
        port = None
    if not hostname:
        raise ConfigError(f"invalid host {host!r} in redis URL {redact(url)!r}")
    return Address(hostname, port if port is not None else default_port)


def _flag(value: str, name: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ConfigError(f"{name} in a redis URL is true or false, got {value!r}")


def _tls_context(query: dict[str, str]) -> ssl.SSLContext:
    reqs_name = query.get("ssl_cert_reqs", "required").lower()
    if reqs_name not in _CERT_REQS:
        raise ConfigError(
            f"ssl_cert_reqs in a redis URL is none, optional or required, got {reqs_name!r}"
        )
    cert_reqs = _CERT_REQS[reqs_name]
    check_hostname = _flag(
        query.get("ssl_check_hostname", "false" if cert_reqs == ssl.CERT_NONE else "true"),
        "ssl_check_hostname",
    )
    if check_hostname and cert_reqs == ssl.CERT_NONE:
        raise ConfigError("ssl_check_hostname=true needs ssl_cert_reqs optional or required")
    try:
        context = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
        context.check_hostname = check_hostname
        context.verify_mode = cert_reqs
        if "ssl_certfile" in query:
            context.load_cert_chain(query["ssl_certfile"], query.get("ssl_keyfile"))
        elif "ssl_keyfile" in query:
            raise ConfigError("ssl_keyfile in a redis URL needs ssl_certfile")
    except OSError as error:
        raise ConfigError(f"cannot set up TLS for redis: {error}") from None
    return context
