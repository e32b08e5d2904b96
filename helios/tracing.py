"""Tracing with the OpenTelemetry SDK, set up from the standard ``OTEL_*`` variables.

Tracing is off unless an OTLP endpoint is configured
(``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``) or
``OTEL_TRACES_EXPORTER=otlp`` asks for the default one
(``http://localhost:4318/v1/traces``). ``OTEL_TRACES_EXPORTER=none`` or
``OTEL_SDK_DISABLED=true`` turn it off whatever else is set. When it is off,
:func:`start_tracing` returns ``None`` and no OpenTelemetry object exists:
each instrumented place costs one ``is None`` check.

When it is on, spans are exported over OTLP/HTTP (protobuf) by a
``BatchSpanProcessor``, whose own thread does the encoding and the I/O; the
request path only appends finished spans to its queue.

How sampling is decided: Helios makes the sampling decision itself, before any
span object is built, so that a request that is not sampled costs a random
number (and a look at its ``traceparent`` header), nothing more. The decision
follows ``OTEL_TRACES_SAMPLER`` exactly: a root is sampled when 64 random bits
fall below ``ratio × 2**64`` (what ``traceidratio`` computes from a random
trace id); ``parentbased_*`` samplers follow the caller's ``sampled`` flag when
a ``traceparent`` came in; ``traceidratio`` compares the caller's trace id.
Spans that are created are then always recorded (the SDK's sampler is
``ALWAYS_ON``), and child spans (Redis, etcd) are made only under a recording
parent. Outside any request (etcd calls of background tasks) a span is a root,
sampled as a request without ``traceparent`` would be.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from helios import __version__
from helios.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.util.types import AttributeValue

log = logging.getLogger("helios.tracing")

DEFAULT_SAMPLER = "parentbased_traceidratio"
# One request in a hundred: enough to see where time goes, cheap at tens of
# thousands of decisions a second.
DEFAULT_RATIO = 0.01
DEFAULT_OTLP_ENDPOINT = "http://localhost:4318"

_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_PROTOCOLS = ("", "http/protobuf")
_ID_BITS = 64
_ID_LIMIT = 1 << _ID_BITS
_ID_MASK = _ID_LIMIT - 1

_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """What the ``OTEL_*`` variables ask for, when tracing is on."""

    service_name: str
    #: The full URL spans are posted to (``…/v1/traces``).
    endpoint: str
    sampler: str
    #: The sampling ratio of roots (1 for ``*always_on``, 0 for ``*always_off``).
    ratio: float

    def describe(self) -> str:
        """One line for the log: where to, as whom, how sampled; never a credential."""
        sampler = self.sampler
        if sampler.endswith("traceidratio"):
            sampler += f" (ratio {self.ratio:g})"
        return f"OTLP/HTTP to {_shown(self.endpoint)} as {self.service_name}, sampler {sampler}"


def tracing_settings(role: str, environ: Mapping[str, str]) -> TracingSettings | None:
    """The tracing ``environ`` asks for, or ``None`` when tracing is off.

    Raises :class:`~helios.errors.ConfigError`, naming the variable, for a value
    Helios cannot honour (another exporter or protocol, a bad sampler).
    """

    def get(name: str) -> str:
        return environ.get(name, "").strip()

    if get("OTEL_SDK_DISABLED").lower() == "true":
        return None
    exporter = get("OTEL_TRACES_EXPORTER").lower()
    if exporter not in ("", "otlp", "none"):
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER must be otlp or none (Helios exports over OTLP/HTTP),"
            f" got {exporter!r}",
            field="OTEL_TRACES_EXPORTER",
        )
    endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base = get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if exporter == "none" or (not exporter and not endpoint and not base):
        return None
    if not endpoint:
        endpoint = (base or DEFAULT_OTLP_ENDPOINT).rstrip("/") + "/v1/traces"
    if not _is_http_url(endpoint):
        name = (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
            if get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            else "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        raise ConfigError(
            f"{name} must be an http:// or https:// URL, got {_shown(endpoint)!r}", field=name
        )
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        if get(name) not in _PROTOCOLS:
            raise ConfigError(
                f"{name} must be http/protobuf (Helios exports over OTLP/HTTP), got {get(name)!r}",
                field=name,
            )
    sampler = get("OTEL_TRACES_SAMPLER").lower() or DEFAULT_SAMPLER
    if sampler not in _SAMPLERS:
        raise ConfigError(
            f"OTEL_TRACES_SAMPLER must be one of {', '.join(_SAMPLERS)}, got {sampler!r}",
            field="OTEL_TRACES_SAMPLER",
        )
    return TracingSettings(
        service_name=get("OTEL_SERVICE_NAME") or f"helios-{role}",
        endpoint=endpoint,
        sampler=sampler,
        ratio=_ratio(sampler, get("OTEL_TRACES_SAMPLER_ARG")),
    )


def _ratio(sampler: str, argument: str) -> float:
    if sampler.endswith("always_on"):
        return 1.0
    if sampler.endswith("always_off"):
        return 0.0
    if not argument:
        return DEFAULT_RATIO
    try:
        ratio = float(argument)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(
            f"OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1, got {argument!r}",
            field="OTEL_TRACES_SAMPLER_ARG",
        )
    return ratio


class Tracing:
    """The process's tracer: decides sampling, starts spans, exports them.

    ``exporter`` replaces the OTLP/HTTP exporter (tests, benchmarks).
    """

    def __init__(self, settings: TracingSettings, exporter: SpanExporter | None = None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # Headers, TLS files, compression and timeout come from the
            # OTEL_EXPORTER_OTLP_* variables, read by the exporter itself.
            exporter = OTLPSpanExporter(endpoint=settings.endpoint)
        self.settings = settings
        resource = Resource.create(
            {"service.name": settings.service_name, "service.version": __version__}
        )
        # Every span that gets created is recorded: sampling was decided before.
        self.provider: TracerProvider = TracerProvider(
            sampler=ALWAYS_ON, resource=resource, shutdown_on_exit=False
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer: Tracer = self.provider.get_tracer("helios", __version__)
        self._parent_based = settings.sampler.startswith("parentbased_")
        # A root (or, for traceidratio, a trace id) is sampled below this bound.
        self._bound = round(settings.ratio * _ID_LIMIT)

    # Sampling.

    def sample_root(self) -> bool:
        """Whether a new trace is sampled (a request without ``traceparent``)."""
        return random.getrandbits(_ID_BITS) < self._bound

    def _sample_child_of(self, parent: trace.SpanContext) -> bool:
        if self._parent_based:
            return parent.trace_flags.sampled
        return (parent.trace_id & _ID_MASK) < self._bound

    # Spans.

    def start_server_span(
        self, name: str, traceparent: str | None, tracestate: str | None = None
    ) -> Span | None:
        """A SERVER span for a request, or ``None`` if it is not sampled.

        ``traceparent`` and ``tracestate`` are the W3C Trace Context headers;
        an invalid ``traceparent`` is ignored, as if absent.
        """
        if traceparent is None:
            return self.start_root_span(name) if self.sample_root() else None
        carrier = {"traceparent": traceparent}
        if tracestate:
            carrier["tracestate"] = tracestate
        context: Context | None = _PROPAGATOR.extract(carrier)
        parent = trace.get_current_span(context).get_span_context()
        if not parent.is_valid:
            context = None
            if not self.sample_root():
                return None
        elif not self._sample_child_of(parent):
            return None
        return self.tracer.start_span(name, context=context, kind=SpanKind.SERVER)

    def start_root_span(self, name: str) -> Span:
        """A SERVER span that starts a trace; the caller has sampled it (:meth:`sample_root`)."""
        return self.tracer.start_span(name, kind=SpanKind.SERVER)

    def start_child_span(
        self, name: str, attributes: Mapping[str, AttributeValue], *, root: bool = False
    ) -> Span | None:
        """A CLIENT span under the current span if that one records, else ``None``.

        ``root``: without a recording parent, start a new trace (sampled as
        :meth:`sample_root` says) instead of nothing.
        """
        if trace.get_current_span().is_recording():
            return self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        if root and self.sample_root():
            root_context = trace.set_span_in_context(trace.INVALID_SPAN)
            return self.tracer.start_span(
                name, context=root_context, kind=SpanKind.CLIENT, attributes=attributes
            )
        return None

    @contextmanager
    def client_span(
        self, name: str, attributes: Mapping[str, AttributeValue], *, root: bool = False
    ) -> Iterator[Span | None]:
        """:meth:`start_child_span` as a context manager that ends the span.

        An exception marks the span as failed, with the exception's class.
        """
        span = self.start_child_span(name, attributes, root=root)
        if span is None:
            yield None
            return
        try:
            yield span
        except BaseException as error:
            failed(span, error)
            raise
        finally:
            span.end()

    def shutdown(self) -> None:
        """Export what is queued and stop the export thread (blocks; call from a thread)."""
        self.provider.shutdown()


def failed(span: Span, error: BaseException) -> None:
    """Mark ``span`` as failed by ``error`` (its class; the message may quote input)."""
    kind = type(error).__name__
    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, kind))


def start_tracing(
    role: str, environ: Mapping[str, str] | None = None, exporter: SpanExporter | None = None
) -> Tracing | None:
    """Tracing as ``environ`` (the process's environment) asks, or ``None`` when off."""
    settings = tracing_settings(role, os.environ if environ is None else environ)
    return None if settings is None else Tracing(settings, exporter)


def log_tracing(tracing: Tracing | None) -> None:
    """The start-up line saying whether tracing is on, where to, and how sampled."""
    if tracing is None:
        log.info(
            "tracing off (set OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER=otlp to export)"
        )
    else:
        log.info("tracing on: %s", tracing.settings.describe())


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def _shown(url: str) -> str:
    """``url`` without user, password or query, which may hold credentials."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"
