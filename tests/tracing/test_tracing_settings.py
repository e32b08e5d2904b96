"""Which OTEL_* variables turn tracing on, and how Helios samples (no process, no network)."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, TraceFlags

from helios.errors import ConfigError
from helios.tracing import DEFAULT_RATIO, Tracing, TracingSettings, tracing_settings

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}


def test_off_without_an_endpoint() -> None:
    assert tracing_settings("gateway", {}) is None
    assert tracing_settings("gateway", {"OTEL_SERVICE_NAME": "x"}) is None


def test_an_endpoint_turns_it_on_with_the_defaults() -> None:
    settings = tracing_settings("gateway", ENDPOINT)
    assert settings == TracingSettings(
        service_name="helios-gateway",
        endpoint="http://collector:4318/v1/traces",
        sampler="parentbased_traceidratio",
        ratio=DEFAULT_RATIO,
    )


def test_the_traces_endpoint_is_taken_as_it_is() -> None:
    settings = tracing_settings(
        "control",
        {**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example/custom"},
    )
    assert settings is not None
    assert settings.endpoint == "https://traces.example/custom"


def test_exporter_otlp_alone_uses_the_default_endpoint() -> None:
    settings = tracing_settings("all", {"OTEL_TRACES_EXPORTER": "otlp"})
    assert settings is not None
    assert settings.endpoint == "http://localhost:4318/v1/traces"
    assert settings.service_name == "helios-all"


@pytest.mark.parametrize(
    "switch",
    [
        {"OTEL_SDK_DISABLED": "true"},
        {"OTEL_SDK_DISABLED": "TRUE"},
        {"OTEL_TRACES_EXPORTER": "none"},
    ],
)
def test_switched_off_whatever_else_is_set(switch: dict[str, str]) -> None:
    assert (
        tracing_settings("gateway", {**ENDPOINT, "OTEL_TRACES_EXPORTER": "otlp", **switch}) is None
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ("OTEL_TRACES_SAMPLER_ARG", "often"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
    ],
)
def test_a_value_helios_cannot_honour_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        tracing_settings("gateway", {**ENDPOINT, name: value})
    assert name in raised.value.message
    assert raised.value.field == name


def test_the_description_shows_no_credentials() -> None:
    settings = tracing_settings(
        "gateway",
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://user:hunter2@collector:4318/v1/traces?token=t0p",
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer s3cret",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
        },
    )
    assert settings is not None
    line = settings.describe()
    assert line == (
        "OTLP/HTTP to https://collector:4318/v1/traces as helios-gateway,"
        " sampler parentbased_traceidratio (ratio 0.25)"
    )


def _tracing(sampler: str, ratio: float) -> Tracing:
    settings = TracingSettings("helios-test", "http://127.0.0.1:9/v1/traces", sampler, ratio)
    return Tracing(settings, InMemorySpanExporter())


def _traceparent(trace_id: int, sampled: bool) -> str:
    return f"00-{trace_id:032x}-{0xB7AD6B7169203331:016x}-{'01' if sampled else '00'}"


def test_roots_are_sampled_at_the_ratio() -> None:
    for ratio, expected in ((0.0, 0), (1.0, 1000)):
        tracing = _tracing("parentbased_traceidratio", ratio)
        try:
            assert sum(tracing.sample_root() for _ in range(1000)) == expected
        finally:
            tracing.shutdown()
    tracing = _tracing("traceidratio", 0.25)
    try:
        # 20,000 draws at 25 %: the count lies within 5 standard deviations.
        assert abs(sum(tracing.sample_root() for _ in range(20_000)) - 5000) < 5 * 62
    finally:
        tracing.shutdown()


def test_parent_based_samplers_follow_the_callers_flag() -> None:
    tracing = _tracing("parentbased_traceidratio", 0.0)
    try:
        span = tracing.start_server_span("s", _traceparent(7, sampled=True))
        assert span is not None
        context: SpanContext = span.get_span_context()
        assert context.trace_id == 7
        assert context.trace_flags & TraceFlags.SAMPLED
        span.end()
        assert tracing.start_server_span("s", _traceparent(7, sampled=False)) is None
        # A broken traceparent counts as none: a root, sampled at the ratio (0 here).
        assert tracing.start_server_span("s", "00-zz-zz-01") is None
    finally:
        tracing.shutdown()


def test_traceidratio_decides_on_the_callers_trace_id() -> None:
    tracing = _tracing("traceidratio", 0.5)
    try:
        low, high = 1, (1 << 64) - 1
        assert tracing.start_server_span("s", _traceparent(low, sampled=False)) is not None
        assert tracing.start_server_span("s", _traceparent(high, sampled=True)) is None
    finally:
        tracing.shutdown()


def test_child_spans_only_under_a_recording_span() -> None:
    tracing = _tracing("always_on", 1.0)
    try:
        assert tracing.start_child_span("redis.evalsha", {}) is None
        root = tracing.start_child_span("etcd kv/range", {}, root=True)
        assert root is not None
        root.end()
    finally:
        tracing.shutdown()
