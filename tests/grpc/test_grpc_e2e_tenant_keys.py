"""Tenant API keys over gRPC: issued by the control plane, bound to their tenant.

The real ``helios --role all`` process; the key is issued through the control
plane's REST API and used with a grpcio client, on the Helios API and on
Envoy's rate limit service.
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

import grpc
import pytest
from grpc_e2e_support import GrpcHeliosFactory, grpc_helios_fixture  # noqa: F401

from helios.grpc.generated.envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import (
    RateLimitDescriptor,
)
from helios.grpc.generated.envoy.service.ratelimit.v3.rls_pb2 import RateLimitRequest
from helios.grpc.generated.helios.v1 import ratelimit_pb2 as pb

pytestmark = pytest.mark.slow

POLICIES = """\
[[policies]]
tenant = "*"
resource = "*"
algorithm = "fixed_window"
limit = 5
window = "1h"
"""


def code_of(call: Any) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_a_tenant_key_acts_for_its_tenant_only(
    grpc_helios: GrpcHeliosFactory, grpcio_stubs: dict[str, ModuleType]
) -> None:
    helios = grpc_helios(POLICIES)
    with helios.helios.admin() as admin:
        assert admin.post("/v1/tenants", json={"name": "acme"}).status_code == 201
        issued = admin.post("/v1/tenants/acme/keys", json={})
        assert issued.status_code == 201, issued.text
        key = issued.json()["key"]
        key_id = issued.json()["id"]

    metadata = (("x-api-key", key),)
    with grpc.insecure_channel(helios.target) as channel:
        stub = grpcio_stubs["helios"].RateLimitServiceStub(channel)
        envoy = grpcio_stubs["envoy"].RateLimitServiceStub(channel)

        def allow(tenant: str) -> Any:
            return stub.Allow(
                pb.AllowRequest(tenant=tenant, resource="search"), metadata=metadata, timeout=5
            )

        def rls(domain: str) -> Any:
            entry = RateLimitDescriptor.Entry(key="path", value="/a")
            request = RateLimitRequest(
                domain=domain, descriptors=[RateLimitDescriptor(entries=[entry])]
            )
            return envoy.ShouldRateLimit(request, metadata=metadata, timeout=5)

        # The key reaches the gateway within a second.
        deadline = time.monotonic() + 1.0
        while code_of(lambda: allow("acme")) != grpc.StatusCode.OK:
            assert time.monotonic() < deadline, "the key did not work within a second"
            time.sleep(0.02)

        assert allow("acme").remaining == 3
        assert code_of(lambda: allow("globex")) == grpc.StatusCode.PERMISSION_DENIED
        assert code_of(lambda: rls("globex")) == grpc.StatusCode.PERMISSION_DENIED
        assert rls("acme").overall_code == 1  # OK
        assert (
            code_of(
                lambda: stub.GetQuota(
                    pb.GetQuotaRequest(tenant="globex", resource="search"),
                    metadata=metadata,
                    timeout=5,
                )
            )
            == grpc.StatusCode.PERMISSION_DENIED
        )

        with helios.helios.admin() as admin:
            assert admin.delete(f"/v1/tenants/acme/keys/{key_id}").status_code == 204
        deadline = time.monotonic() + 1.0
        while code_of(lambda: allow("acme")) != grpc.StatusCode.UNAUTHENTICATED:
            assert time.monotonic() < deadline, "the revoked key still worked after a second"
            time.sleep(0.02)
