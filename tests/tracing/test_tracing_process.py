"""Spans of the real ``helios`` process, received over OTLP/HTTP by a receiver on loopback."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from e2e_support import ADMIN_KEY, HeliosProcess
from etcd_servers import EtcdServer
from otlp_receiver import OtlpReceiver, ReceivedSpan, tracing_to
from redis_servers import RedisServer

# A key no span, attribute or resource may ever contain.
SECRET_KEY = "tracing-secret-key-5f0c1e"
SERVER, CLIENT = 2, 3
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"

HeliosFactory = Callable[..., HeliosProcess]


def _values(span: ReceivedSpan) -> list[str]:
    return [span.name, *map(str, span.attributes.values()), *map(str, span.resource.values())]


def test_decision_spans_carry_the_decision(
    receiver: OtlpReceiver, helios_factory: HeliosFactory
) -> None:
    helios = helios_factory(settings=tracing_to(receiver), api_keys=SECRET_KEY)
    with helios.client() as client:
        allowed = client.get(
            "/allow?tenant=acme&resource=demo",
            headers={"X-API-Key": SECRET_KEY, "traceparent": TRACEPARENT},
        )
        assert allowed.status_code == 200
        client.post(
            "/api/v1/allow",
            json={"tenant": "acme", "resource": "demo", "cost": 10},
            headers={"Authorization": f"Bearer {SECRET_KEY}"},
        )
        client.get(f"/api/v1/quota/acme?resource=demo&api_key={SECRET_KEY}")
        client.post(
            "/api/v1/allow/batch",
            json={
                "checks": [{"tenant": "zeta", "resource": "r"}, {"tenant": "zeta", "resource": "r"}]
            },
            headers={"X-API-Key": SECRET_KEY},
        )
        assert client.get("/allow?tenant=acme&api_key=wrong").status_code == 401
        client.get("/health")

    spans = receiver.wait_for(lambda spans: len(spans) >= 5)
    by_route = {
        (span.attributes["http.route"], span.attributes["http.response.status_code"]): span
        for span in spans
    }
    assert set(by_route) == {
        ("/allow", 200),
        ("/api/v1/allow", 429),
        ("/api/v1/quota/{tenant}", 200),
        ("/api/v1/allow/batch", 200),
        ("/allow", 401),
    }, "one span per decision request, none for /health"

    first = by_route["/allow", 200]
    assert first.name == "helios.decide"
    assert first.kind == SERVER
    assert first.trace_id == TRACE_ID
    assert first.parent_span_id == PARENT_ID
    assert first.attributes["helios.tenant"] == "acme"
    assert first.attributes["helios.resource"] == "demo"
    assert first.attributes["helios.result"] == "allowed"
    assert first.attributes["helios.mode"] == "fast"
    assert first.resource["service.name"] == "helios-all"

    denied = by_route["/api/v1/allow", 429]
    assert denied.attributes["helios.result"] == "denied"
    assert denied.trace_id != TRACE_ID and denied.parent_span_id == ""

    quota = by_route["/api/v1/quota/{tenant}", 200]
    assert quota.name == "helios.quota"
    assert quota.attributes["helios.tenant"] == "acme"

    batch = by_route["/api/v1/allow/batch", 200]
    assert batch.attributes["helios.batch.size"] == 2
    assert batch.attributes["helios.tenant"] == "zeta"
    assert batch.attributes["helios.result"] == "allowed"

    refused = by_route["/allow", 401]
    assert refused.attributes["helios.result"] == "error"
    assert "helios.tenant" not in refused.attributes

    for span in spans:
        assert not any(SECRET_KEY in value for value in _values(span)), span
    assert "tracing on: OTLP/HTTP to http://127.0.0.1:" in helios.log()


def test_strong_mode_gives_a_redis_span_under_the_decision(
    receiver: OtlpReceiver, redis_server: RedisServer, helios_factory: HeliosFactory
) -> None:
    settings = tracing_to(
        receiver,
        GATEWAY_CONSISTENCY_MODE="strong",
        HELIOS_REDIS_URL=f"redis://127.0.0.1:{redis_server.port}/0",
    )
    helios = helios_factory(settings=settings)
    with helios.client() as client:
        answer = client.get(
            "/allow?tenant=acme&resource=demo",
            headers={"X-API-Key": "test-key", "traceparent": TRACEPARENT},
        )
    assert answer.json()["mode"] == "strong"

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = {span.name for span in spans if span.trace_id == TRACE_ID}
        return {"helios.decide", "redis.evalsha"} <= names

    spans = [span for span in receiver.wait_for(complete) if span.trace_id == TRACE_ID]
    (decision,) = [span for span in spans if span.name == "helios.decide"]
    (redis,) = [span for span in spans if span.name == "redis.evalsha"]
    assert decision.attributes["helios.mode"] == "strong"
    assert redis.kind == CLIENT
    assert redis.parent_span_id == decision.span_id
    assert redis.attributes["db.system"] == "redis"
    assert redis.attributes["db.operation.name"] == "EVALSHA"


def test_control_plane_requests_and_their_etcd_calls(
    receiver: OtlpReceiver, etcd_server: EtcdServer, helios_factory: HeliosFactory
) -> None:
    settings = tracing_to(receiver, HELIOS_ETCD_ENDPOINTS=etcd_server.url)
    helios = helios_factory(settings=settings, role="control")
    answer = httpx.post(
        f"{helios.control_url}/v1/tenants",
        json={"name": "acme"},
        headers={"X-API-Key": ADMIN_KEY, "traceparent": TRACEPARENT},
        timeout=5.0,
    )
    assert answer.status_code == 201, answer.text

    def complete(spans: list[ReceivedSpan]) -> bool:
        ours = [span for span in spans if span.trace_id == TRACE_ID]
        return any(span.kind == SERVER for span in ours) and any(
            span.name.startswith("etcd ") for span in ours
        )

    spans = [span for span in receiver.wait_for(complete) if span.trace_id == TRACE_ID]
    (request,) = [span for span in spans if span.kind == SERVER]
    assert request.name == "POST /v1/tenants"
    assert request.parent_span_id == PARENT_ID
    assert request.attributes["http.route"] == "/v1/tenants"
    assert request.attributes["http.response.status_code"] == 201
    assert request.resource["service.name"] == "helios-control"
    calls = [span for span in spans if span.name.startswith("etcd ")]
    assert all(span.kind == CLIENT and span.parent_span_id == request.span_id for span in calls)
    assert all(span.attributes["db.system"] == "etcd" for span in calls)
    assert {"kv/range", "kv/txn"} & {span.attributes["db.operation.name"] for span in calls}
    for span in receiver.snapshot():
        assert not any(ADMIN_KEY in value for value in _values(span)), span


def test_off_means_no_export_at_all(receiver: OtlpReceiver, helios_factory: HeliosFactory) -> None:
    switched_off = [
        {"OTEL_SDK_DISABLED": "true"},
        {"OTEL_TRACES_EXPORTER": "none"},
    ]
    processes = [helios_factory(settings=tracing_to(receiver, **switch)) for switch in switched_off]
    processes.append(helios_factory())  # no OTEL_* variable at all
    for helios in processes:
        with helios.client() as client:
            for _ in range(20):
                client.get("/allow?tenant=acme&resource=demo&api_key=test-key")
        # Stopped cleanly, so a tracer would have flushed its queue by now.
        assert helios.stop() == 0
        assert "tracing off" in helios.log()
    assert receiver.requests == 0


def test_grpc_calls_get_spans_with_the_callers_context(
    receiver: OtlpReceiver, helios_factory: HeliosFactory
) -> None:
    import grpc
    from e2e_support import free_ports

    from helios.grpc.generated.envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import (
        RateLimitDescriptor,
    )
    from helios.grpc.generated.envoy.service.ratelimit.v3 import rls_pb2
    from helios.grpc.generated.helios.v1 import ratelimit_pb2 as pb

    (port,) = free_ports(1)
    settings = {**tracing_to(receiver), "HELIOS_GRPC_PORT": str(port)}
    helios_factory(settings=settings, api_keys=SECRET_KEY)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        allow = channel.unary_unary(
            "/helios.v1.RateLimitService/Allow",
            request_serializer=pb.AllowRequest.SerializeToString,
            response_deserializer=pb.Decision.FromString,
        )
        quota = channel.unary_unary(
            "/helios.v1.RateLimitService/GetQuota",
            request_serializer=pb.GetQuotaRequest.SerializeToString,
            response_deserializer=pb.Quota.FromString,
        )
        should_rate_limit = channel.unary_unary(
            "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
            request_serializer=rls_pb2.RateLimitRequest.SerializeToString,
            response_deserializer=rls_pb2.RateLimitResponse.FromString,
        )
        metadata = (("x-api-key", SECRET_KEY), ("traceparent", TRACEPARENT))
        assert allow(pb.AllowRequest(tenant="acme", resource="demo"), metadata=metadata).allowed
        quota(pb.GetQuotaRequest(tenant="acme", resource="demo"), metadata=metadata)
        entry = RateLimitDescriptor.Entry(key="remote_address", value="10.0.0.1")
        envoy_request = rls_pb2.RateLimitRequest(
            domain="acme", descriptors=[RateLimitDescriptor(entries=[entry])] * 2
        )
        answer = should_rate_limit(envoy_request, metadata=metadata)
        assert answer.overall_code == rls_pb2.RateLimitResponse.Code.OK
        try:
            allow(pb.AllowRequest(tenant="acme"), metadata=(("x-api-key", "wrong"),))
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        else:
            raise AssertionError("a wrong key was accepted")

    spans = receiver.wait_for(
        lambda spans: len([s for s in spans if "rpc.method" in s.attributes]) >= 4
    )
    by_method = {
        (span.attributes["rpc.method"], span.attributes["rpc.grpc.status_code"]): span
        for span in spans
        if "rpc.method" in span.attributes
    }
    decided = by_method["Allow", 0]
    assert decided.name == "helios.decide"
    assert decided.kind == SERVER
    assert decided.trace_id == TRACE_ID
    assert decided.parent_span_id == PARENT_ID
    assert decided.attributes["rpc.service"] == "helios.v1.RateLimitService"
    assert decided.attributes["helios.tenant"] == "acme"
    assert decided.attributes["helios.result"] == "allowed"
    assert by_method["GetQuota", 0].name == "helios.quota"
    envoy = by_method["ShouldRateLimit", 0]
    assert envoy.name == "helios.decide" and envoy.parent_span_id == PARENT_ID
    assert envoy.attributes["rpc.service"] == "envoy.service.ratelimit.v3.RateLimitService"
    assert envoy.attributes["helios.tenant"] == "acme"
    assert envoy.attributes["helios.descriptors"] == 2
    assert envoy.attributes["helios.result"] == "allowed"
    assert envoy.attributes["helios.mode"] == "fast"
    refused = by_method["Allow", 16]  # UNAUTHENTICATED
    assert refused.attributes["helios.result"] == "error"
    for span in spans:
        assert not any(SECRET_KEY in value for value in _values(span)), span
