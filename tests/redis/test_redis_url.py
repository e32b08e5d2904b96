"""Redis URLs: every documented form, and the errors for the rest."""

from __future__ import annotations

import ssl

import pytest

from helios.backends.redis import Address, ClientOptions, parse_redis_url, redact
from helios.errors import ConfigError


def test_a_plain_url_names_one_server() -> None:
    target = parse_redis_url("redis://cache.internal")
    assert target.kind == "standalone"
    assert target.addresses == (Address("cache.internal", 6379),)
    assert target.settings.db == 0
    assert target.settings.password is None
    assert target.settings.ssl_context is None


def test_credentials_and_database() -> None:
    target = parse_redis_url("redis://alice:p%40ss%2Fword@10.0.0.5:6380/7")
    assert target.addresses == (Address("10.0.0.5", 6380),)
    assert (target.settings.username, target.settings.password) == ("alice", "p@ss/word")
    assert target.settings.db == 7
    assert "p@ss" not in repr(target)

    password_only = parse_redis_url("redis://:secret@host/2")
    assert (password_only.settings.username, password_only.settings.password) == (None, "secret")
    assert parse_redis_url("redis://host?db=4").settings.db == 4


def test_ipv6_hosts() -> None:
    target = parse_redis_url("redis+cluster://[::1]:7000,[fe80::2]:7001")
    assert target.addresses == (Address("::1", 7000), Address("fe80::2", 7001))
    assert str(target.addresses[0]) == "[::1]:7000"


def test_tls_parameters() -> None:
    target = parse_redis_url("rediss://host:6390/1")
    context = target.settings.ssl_context
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname

    relaxed = parse_redis_url("rediss://host?ssl_cert_reqs=none").settings.ssl_context
    assert relaxed is not None
    assert relaxed.verify_mode == ssl.CERT_NONE
    assert not relaxed.check_hostname

    no_hostname = parse_redis_url("rediss://host?ssl_check_hostname=false").settings.ssl_context
    assert no_hostname is not None
    assert not no_hostname.check_hostname


def test_cluster_forms() -> None:
    target = parse_redis_url("redis+cluster://:pw@n1:7000,n2:7001,n3")
    assert target.kind == "cluster"
    assert target.addresses == (Address("n1", 7000), Address("n2", 7001), Address("n3", 6379))
    assert target.settings.password == "pw"

    one_seed = parse_redis_url("redis://n1:7000?cluster=true")
    assert one_seed.kind == "cluster"
    assert one_seed.addresses == (Address("n1", 7000),)
    assert parse_redis_url("redis://n1:7000?cluster=false").kind == "standalone"

    tls = parse_redis_url("rediss+cluster://n1:7000?ssl_cert_reqs=optional")
    assert tls.settings.ssl_context is not None


def test_sentinel_forms() -> None:
    target = parse_redis_url("redis+sentinel://:masterpw@s1,s2:26380/mymaster/3")
    assert target.kind == "sentinel"
    assert target.addresses == (Address("s1", 26379), Address("s2", 26380))
    assert target.service_name == "mymaster"
    assert target.settings.password == "masterpw"
    assert target.settings.db == 3
    assert target.sentinel_settings is not None
    assert target.sentinel_settings.password is None

    with_sentinel_password = parse_redis_url(
        "redis+sentinel://s1/cache?sentinel_password=sp&sentinel_username=watcher"
    )
    assert with_sentinel_password.settings.db == 0
    assert with_sentinel_password.sentinel_settings is not None
    assert with_sentinel_password.sentinel_settings.username == "watcher"
    assert with_sentinel_password.sentinel_settings.password == "sp"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("localhost:6379", "starts with redis://"),
        ("http://host", "unsupported redis URL scheme"),
        ("redis+etcd://host", "unsupported redis URL scheme"),
        ("redis://host?socket_timeout=1", "unknown parameter 'socket_timeout'"),
        ("redis://host?ssl_cert_reqs=none", "unknown parameter 'ssl_cert_reqs'"),
        ("rediss://host?ssl_cert_reqs=sometimes", "none, optional or required"),
        ("redis://host/zero", "database in a redis URL is a number"),
        ("redis://h1,h2", "names one server"),
        ("redis://host:port", "invalid host"),
        ("redis://:6379", "invalid host"),
        ("redis+cluster://h1/2", "only database 0"),
        ("redis://host?cluster=maybe", "true or false"),
        ("redis+sentinel://s1:26379", "names the master's service"),
        ("redis+sentinel://s1/mymaster?db=2", "unknown parameter 'db'"),
        ("rediss://host?ssl_ca_certs=/nonexistent/ca.pem", "cannot set up TLS"),
    ],
)
def test_invalid_urls_are_config_errors(url: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_redis_url(url)
    assert complaint in caught.value.message


def test_errors_and_redaction_never_show_a_password() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_redis_url("redis://user:hunter2@host?bogus=1")
    assert "hunter2" not in caught.value.message
    assert "user:***@host" in caught.value.message
    assert redact("redis+sentinel://:a@s1/m?sentinel_password=b") == (
        "redis+sentinel://:***@s1/m?sentinel_password=***"
    )
    assert redact("redis://host:6379/0") == "redis://host:6379/0"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"timeout_ms": 0}, "timeout_ms"),
        ({"pool_size": 0}, "pool_size"),
        ({"connect_timeout_ms": -1}, "connect_timeout_ms"),
        ({"reconnect_min_ms": 2000, "reconnect_max_ms": 1000}, "reconnect_min_ms"),
    ],
)
def test_client_options_are_checked(options: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ClientOptions(**options)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert field in caught.value.message
