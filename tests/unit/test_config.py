"""Configuration: file, environment and flags, with unknown or bad settings refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from helios.config import Config, load_config
from helios.errors import ConfigError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "helios.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def config_error(*args: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(*args)  # type: ignore[arg-type]
    return caught.value.message


def test_defaults_without_file_environment_or_flags() -> None:
    config = load_config(None, {}, {})
    assert config == Config()
    assert (config.role, config.gateway.mode, config.http.port) == ("all", "fast", 8080)
    assert (config.grpc.port, config.metrics.port) == (9080, 2112)
    assert (config.control.http_port, config.control.grpc_port) == (8081, 9081)


def test_file_settings_are_applied(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'role = "gateway"\n'
        '[gateway]\nmode = "strong"\nmax_buckets = 5000\nallowed_api_keys = ["a", "b"]\n'
        "[http]\nport = 9000\nidle_timeout_seconds = 30\ntls_enabled = false\n",
    )
    config = load_config(path, {}, {})
    assert config.role == "gateway"
    assert (config.gateway.mode, config.gateway.max_buckets) == ("strong", 5000)
    assert config.gateway.allowed_api_keys == ["a", "b"]
    assert (config.http.port, config.http.idle_timeout_seconds) == (9000, 30.0)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("colour = 1\n", "'colour'"),
        ("[htttp]\nport = 1\n", "'htttp'"),
        ("[http]\nprot = 1\n", "'http.prot'"),
        ("[gateway]\nmax_bucket = 10\n", "'gateway.max_bucket'"),
    ],
)
def test_unknown_key_in_file_is_an_error_naming_it(tmp_path: Path, text: str, named: str) -> None:
    message = config_error(write(tmp_path, text), {}, {})
    assert "unknown setting" in message
    assert named in message


def test_file_that_is_not_toml_or_missing_is_an_error(tmp_path: Path) -> None:
    assert "not valid TOML" in config_error(write(tmp_path, "[http\n"), {}, {})
    assert "cannot read config file" in config_error(str(tmp_path / "missing.toml"), {}, {})


def test_unknown_helios_environment_variable_is_an_error_naming_it() -> None:
    message = config_error(None, {"HELIOS_HTTP_PROT": "9000"}, {})
    assert message == "unknown environment variable HELIOS_HTTP_PROT"


def test_other_environment_variables_are_ignored() -> None:
    config = load_config(
        None, {"PATH": "/bin", "GATEWAY_COLOUR": "blue", "HELIOS_API_KEY": "k"}, {}
    )
    assert config == Config()


def test_helios_config_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nport = 7000\n")
    assert load_config(None, {"HELIOS_CONFIG": path}, {}).http.port == 7000


@pytest.mark.parametrize(
    ("environ", "overrides", "file_text", "setting"),
    [
        ({}, {}, "[http]\nport = 70000\n", "http.port"),
        ({"HELIOS_HTTP_PORT": "70000"}, {}, "", "http.port"),
        ({}, {"http.port": "70000"}, "", "http.port"),
        ({}, {}, "[metrics]\nport = -1\n", "metrics.port"),
        ({"HELIOS_HTTP_PORT": "eighty"}, {}, "", "http.port"),
        ({"HELIOS_HTTP_PORT": "-1"}, {}, "", "http.port"),
        ({"HELIOS_HTTP_PORT": "80.5"}, {}, "", "http.port"),
        ({}, {}, "[http]\nport = true\n", "http.port"),
        ({}, {}, '[gateway]\nmode = "fastest"\n', "gateway.mode"),
        ({"GATEWAY_CONSISTENCY_MODE": "fastest"}, {}, "", "gateway.mode"),
        ({}, {"gateway.mode": "fastest"}, "", "gateway.mode"),
        ({"GATEWAY_TLS_ENABLED": "maybe"}, {}, "", "http.tls_enabled"),
        ({"HELIOS_METRICS_ENABLED": "maybe"}, {}, "", "metrics.enabled"),
        ({"HELIOS_METRICS_TENANT_LABELS": "maybe"}, {}, "", "metrics.tenant_labels"),
        ({"HELIOS_METRICS_MAX_TENANTS": "0"}, {}, "", "metrics.max_tenants"),
        ({}, {}, "[metrics]\nmax_tenants = 1001\n", "metrics.max_tenants"),
        ({}, {}, '[http]\ntls_enabled = "maybe"\n', "http.tls_enabled"),
        ({"HELIOS_GATEWAY_MAX_BUCKETS": "0"}, {}, "", "gateway.max_buckets"),
        ({"HELIOS_HTTP_IDLE_TIMEOUT_SECONDS": "soon"}, {}, "", "http.idle_timeout_seconds"),
        ({"HELIOS_HTTP_REQUEST_TIMEOUT_SECONDS": "0"}, {}, "", "http.request_timeout_seconds"),
        ({"HELIOS_LOG_LEVEL": "loud"}, {}, "", "log.level"),
        ({"HELIOS_ROLE": "everything"}, {}, "", "role"),
        ({}, {}, "[http]\nhost = 80\n", "http.host"),
        ({}, {}, "[gateway]\nallowed_api_keys = [1, 2]\n", "gateway.allowed_api_keys"),
        ({}, {}, '[gateway]\nallowed_api_keys = ["a", ""]\n', "gateway.allowed_api_keys"),
    ],
)
def test_bad_value_is_an_error_naming_the_setting(
    tmp_path: Path, environ: dict[str, str], overrides: dict[str, str], file_text: str, setting: str
) -> None:
    path = write(tmp_path, file_text) if file_text else None
    message = config_error(path, environ, overrides)
    assert setting in message


def test_tenant_labels_are_off_by_default_and_set_from_the_environment() -> None:
    assert (Config().metrics.tenant_labels, Config().metrics.max_tenants) == (False, 20)
    environ = {"HELIOS_METRICS_TENANT_LABELS": "true", "HELIOS_METRICS_MAX_TENANTS": "50"}
    metrics = load_config(None, environ, {}).metrics
    assert (metrics.tenant_labels, metrics.max_tenants) == (True, 50)


def test_superscript_digit_is_a_config_error_naming_the_setting() -> None:
    message = config_error(None, {"HELIOS_HTTP_PORT": "²"}, {})
    assert "http.port" in message


def test_non_ascii_digits_are_refused() -> None:
    message = config_error(None, {"HELIOS_HTTP_PORT": "\u0668\u0660"}, {})
    assert "http.port" in message


def test_precedence_flags_over_environment_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[http]\nport = 1000\nhost = "0.0.0.0"\n[gateway]\nmode = "strong"\n')
    environ = {"HELIOS_HTTP_PORT": "2000", "HELIOS_GATEWAY_MODE": "fast"}
    flags = {"http.port": "3000"}

    assert load_config(path, {}, {}).http.port == 1000
    config = load_config(path, environ, {})
    assert (config.http.port, config.http.host, config.gateway.mode) == (2000, "0.0.0.0", "fast")
    config = load_config(path, environ, flags)
    assert (config.http.port, config.http.host, config.gateway.mode) == (3000, "0.0.0.0", "fast")
    assert load_config(path, {}, {"gateway.mode": "fast"}).gateway.mode == "fast"


def test_allowed_api_keys_alias_is_comma_separated() -> None:
    config = load_config(None, {"HELIOS_ALLOWED_API_KEYS": "k1, k2,,k3 "}, {})
    assert config.gateway.allowed_api_keys == ["k1", "k2", "k3"]
    config = load_config(None, {"HELIOS_GATEWAY_ALLOWED_API_KEYS": "only"}, {})
    assert config.gateway.allowed_api_keys == ["only"]


def test_environment_overrides_file_keys(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\nallowed_api_keys = ["from-file"]\n')
    config = load_config(path, {"HELIOS_ALLOWED_API_KEYS": "from-env"}, {})
    assert config.gateway.allowed_api_keys == ["from-env"]


def test_consistency_mode_alias() -> None:
    assert load_config(None, {"GATEWAY_CONSISTENCY_MODE": "strong"}, {}).gateway.mode == "strong"


def test_tls_aliases() -> None:
    config = load_config(
        None,
        {
            "GATEWAY_TLS_ENABLED": "true",
            "GATEWAY_CERT_PATH": "/etc/helios/cert.pem",
            "GATEWAY_KEY_PATH": "/etc/helios/key.pem",
        },
        {},
    )
    assert config.http.tls_enabled is True
    assert config.http.cert_path == "/etc/helios/cert.pem"
    assert config.http.key_path == "/etc/helios/key.pem"


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("yes", True), ("ON", True), ("0", False), ("no", False), ("off", False)],
)
def test_boolean_spellings(text: str, value: bool) -> None:
    assert load_config(None, {"HELIOS_METRICS_ENABLED": text}, {}).metrics.enabled is value


def test_tls_without_certificate_and_key_is_an_error() -> None:
    message = config_error(None, {"GATEWAY_TLS_ENABLED": "true", "GATEWAY_CERT_PATH": "/c"}, {})
    assert "http.tls_enabled" in message
    assert "http.key_path" in message


def test_other_aliases() -> None:
    config = load_config(
        None,
        {
            "HELIOS_POLICY_FILE": "/p.toml",
            "HELIOS_LOG_FORMAT": "json",
            "HELIOS_LOG_LEVEL": "debug",
            "HELIOS_ROLE": "gateway",
        },
        {},
    )
    assert config.policies.file == "/p.toml"
    assert (config.log.format, config.log.level, config.role) == ("json", "debug", "gateway")
