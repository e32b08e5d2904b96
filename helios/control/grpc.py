"""The control plane's gRPC API: ``helios.v1.ControlService`` over :class:`ControlPlane`.

It mirrors the REST API resource for resource (``proto/helios/v1/control.proto``)
and does no work of its own: each call checks the admin key, turns the
request message into the arguments the REST API would pass (a policy becomes
the same JSON-shaped document, so validation and its messages are the same),
calls the :class:`~helios.control.plane.ControlPlane`, and turns the result
into a reply message. A :class:`~helios.errors.HeliosError` becomes the gRPC
status its ``grpc_code`` names, with its message.

:class:`ControlGrpcServer` serves it on Helios's own gRPC listener
(:class:`~helios.grpc.transport.GrpcListener`): bound to the configured host
only, TLS with ALPN ``h2``, draining on shutdown.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import nullcontext
from typing import Any, TypeVar

import trio
from purerpc.grpclib.exceptions import RpcFailedError
from purerpc.grpclib.status import Status, StatusCode

from helios.control.metrics import ControlMetrics
from helios.control.model import ApiKey, GatewayInfo, Reset, StoredPolicy, Tenant
from helios.control.plane import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, ControlPlane
from helios.errors import HeliosError, PermissionDenied, Unauthenticated
from helios.gateway.auth import KeyRing
from helios.grpc.generated.helios.v1 import control_grpc
from helios.grpc.generated.helios.v1 import control_pb2 as pb
from helios.grpc.server import _status, api_key
from helios.grpc.transport import GrpcListener

log = logging.getLogger("helios.control")
access_log = logging.getLogger("helios.control.access")

M = TypeVar("M")
T = TypeVar("T")

SERVICE = "helios.v1.ControlService"


# Messages → the documents and arguments of the REST API.


def policy_document(message: pb.Policy) -> dict[str, Any]:
    """The policy JSON the REST API would receive for this message.

    A proto3 field cannot be absent, so an empty string (or false) is left out
    and the policy's default applies; ``burst`` is ``optional`` and sent only
    when set. ``limit`` is always sent, so 0 is refused as 0. The output-only
    fields (tenant, resource, revision) are not part of the document.
    """
    document: dict[str, Any] = {"bands": [_band_document(band) for band in message.bands]}
    if message.algorithm:
        document["algorithm"] = message.algorithm
    if message.shadow:
        document["shadow"] = True
    if message.failure_mode:
        document["failure_mode"] = message.failure_mode
    if message.description:
        document["description"] = message.description
    return document


def _band_document(message: pb.Band) -> dict[str, Any]:
    band: dict[str, Any] = {"limit": message.limit}
    if message.window:
        band["window"] = message.window
    if message.HasField("burst"):
        band["burst"] = message.burst
    if message.calendar:
        band["calendar"] = True
    return band


def _expected(message: Any) -> int | None:
    """``expected_revision`` if the request set it (REST's If-Match)."""
    return int(message.expected_revision) if message.HasField("expected_revision") else None


# Results → reply messages. Each starts from the REST JSON (``to_dict()``), so
# both APIs show the same values, times included.


def tenant_message(tenant: Tenant) -> pb.Tenant:
    shown = tenant.to_dict()
    return pb.Tenant(
        name=shown["name"],
        description=shown["description"],
        created_at=shown["created_at"],
        revision=shown["revision"],
    )


def policy_message(stored: StoredPolicy) -> pb.Policy:
    shown = stored.to_dict()
    return pb.Policy(
        tenant=shown["tenant"],
        resource=shown["resource"],
        algorithm=shown["algorithm"],
        bands=[pb.Band(**band) for band in shown["bands"]],
        shadow=shown["shadow"],
        failure_mode=shown["failure_mode"],
        description=shown.get("description", ""),
        revision=shown["revision"],
    )


def key_message(key: ApiKey) -> pb.ApiKey:
    return pb.ApiKey(**key.to_dict())


def gateway_message(gateway: GatewayInfo) -> pb.Gateway:
    return pb.Gateway(**gateway.to_dict())


def reset_message(reset: Reset) -> pb.Reset:
    # A reset of every resource has none (proto3 optional: left unset).
    return pb.Reset(**reset.to_dict())


class ControlServicer(control_grpc.ControlServiceServicer):
    """helios.v1.ControlService: every call authenticated, then done by the plane."""

    def __init__(
        self, plane: ControlPlane, keys: KeyRing, metrics: ControlMetrics | None = None
    ) -> None:
        self.plane = plane
        self.keys = keys
        self.metrics = metrics

    async def _answer(self, request: Any, handler: Callable[[M], Awaitable[T]], message: M) -> T:
        started = time.perf_counter()
        # An HTTP status for the access log and the metrics, which both APIs
        # share: 200 for a success, else what the REST API answers that error with.
        status = 500
        try:
            # The admin key first: a caller without one learns nothing, not
            # even whether its request was valid.
            self._authenticate(request)
            # A deadline the client set bounds the work done for it.
            timeout = request.timeout
            with trio.fail_after(timeout.total_seconds()) if timeout else nullcontext():
                answer = await handler(message)
            status = 200
            return answer
        except HeliosError as error:
            status = error.http_status
            raise _status(error) from None
        except trio.TooSlowError:
            status = 504
            raise RpcFailedError(
                Status(StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed")
            ) from None
        except Exception:
            log.exception("internal error answering %s", request.method_name)
            raise RpcFailedError(Status(StatusCode.INTERNAL, "internal error")) from None
        finally:
            seconds = time.perf_counter() - started
            route = f"/{SERVICE}/{request.method_name}"
            if self.metrics is not None:
                self.metrics.observe("GRPC", route, status, seconds)
            # As the REST API's access log: never the metadata, which holds the key.
            access_log.info("- GRPC %s %d %.1fms", route, status, seconds * 1000)

    def _authenticate(self, request: Any) -> None:
        key = api_key(request.custom_metadata)
        if key is None:
            raise Unauthenticated(
                "an admin API key is required (metadata x-api-key or authorization: Bearer)",
                field="api_key",
            )
        if self.keys.identify(key) is not None:
            raise PermissionDenied(
                "this is a tenant's API key; the control plane needs an admin key",
                field="api_key",
            )

    # Tenants.

    async def CreateTenant(  # type: ignore[override]
        self, message: pb.CreateTenantRequest, request: Any
    ) -> pb.Tenant:
        return await self._answer(request, self._create_tenant, message)

    async def _create_tenant(self, message: pb.CreateTenantRequest) -> pb.Tenant:
        return tenant_message(await self.plane.create_tenant(message.name, message.description))

    async def GetTenant(  # type: ignore[override]
        self, message: pb.GetTenantRequest, request: Any
    ) -> pb.Tenant:
        return await self._answer(request, self._get_tenant, message)

    async def _get_tenant(self, message: pb.GetTenantRequest) -> pb.Tenant:
        return tenant_message(await self.plane.get_tenant(message.name))

    async def UpdateTenant(  # type: ignore[override]
        self, message: pb.UpdateTenantRequest, request: Any
    ) -> pb.Tenant:
        return await self._answer(request, self._update_tenant, message)

    async def _update_tenant(self, message: pb.UpdateTenantRequest) -> pb.Tenant:
        tenant = await self.plane.update_tenant(
            message.name, message.description, expected_revision=_expected(message)
        )
        return tenant_message(tenant)

    async def DeleteTenant(  # type: ignore[override]
        self, message: pb.DeleteTenantRequest, request: Any
    ) -> pb.DeleteTenantResponse:
        return await self._answer(request, self._delete_tenant, message)

    async def _delete_tenant(self, message: pb.DeleteTenantRequest) -> pb.DeleteTenantResponse:
        await self.plane.delete_tenant(message.name, expected_revision=_expected(message))
        return pb.DeleteTenantResponse()

    async def ListTenants(  # type: ignore[override]
        self, message: pb.ListTenantsRequest, request: Any
    ) -> pb.ListTenantsResponse:
        return await self._answer(request, self._list_tenants, message)

    async def _list_tenants(self, message: pb.ListTenantsRequest) -> pb.ListTenantsResponse:
        # As gRPC APIs usually do: 0 asks for the default, too many for the most.
        size = min(message.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        page = await self.plane.list_tenants(limit=size, after=message.page_token)
        return pb.ListTenantsResponse(
            tenants=[tenant_message(tenant) for tenant in page.items],
            next_page_token=page.next or "",
        )

    # Policies.

    async def PutPolicy(  # type: ignore[override]
        self, message: pb.PutPolicyRequest, request: Any
    ) -> pb.PutPolicyResponse:
        return await self._answer(request, self._put_policy, message)

    async def _put_policy(self, message: pb.PutPolicyRequest) -> pb.PutPolicyResponse:
        stored, created = await self.plane.put_policy(
            message.tenant,
            message.resource,
            policy_document(message.policy),
            expected_revision=_expected(message),
        )
        return pb.PutPolicyResponse(policy=policy_message(stored), created=created)

    async def GetPolicy(  # type: ignore[override]
        self, message: pb.GetPolicyRequest, request: Any
    ) -> pb.Policy:
        return await self._answer(request, self._get_policy, message)

    async def _get_policy(self, message: pb.GetPolicyRequest) -> pb.Policy:
        return policy_message(await self.plane.get_policy(message.tenant, message.resource))

    async def DeletePolicy(  # type: ignore[override]
        self, message: pb.DeletePolicyRequest, request: Any
    ) -> pb.DeletePolicyResponse:
        return await self._answer(request, self._delete_policy, message)

    async def _delete_policy(self, message: pb.DeletePolicyRequest) -> pb.DeletePolicyResponse:
        await self.plane.delete_policy(
            message.tenant, message.resource, expected_revision=_expected(message)
        )
        return pb.DeletePolicyResponse()

    async def ListPolicies(  # type: ignore[override]
        self, message: pb.ListPoliciesRequest, request: Any
    ) -> pb.ListPoliciesResponse:
        return await self._answer(request, self._list_policies, message)

    async def _list_policies(self, message: pb.ListPoliciesRequest) -> pb.ListPoliciesResponse:
        policies = await self.plane.list_policies(message.tenant)
        return pb.ListPoliciesResponse(policies=[policy_message(p) for p in policies])

    # API keys.

    async def IssueKey(  # type: ignore[override]
        self, message: pb.IssueKeyRequest, request: Any
    ) -> pb.IssueKeyResponse:
        return await self._answer(request, self._issue_key, message)

    async def _issue_key(self, message: pb.IssueKeyRequest) -> pb.IssueKeyResponse:
        record, secret = await self.plane.issue_key(message.tenant, message.description)
        return pb.IssueKeyResponse(api_key=key_message(record), key=secret)

    async def ListKeys(  # type: ignore[override]
        self, message: pb.ListKeysRequest, request: Any
    ) -> pb.ListKeysResponse:
        return await self._answer(request, self._list_keys, message)

    async def _list_keys(self, message: pb.ListKeysRequest) -> pb.ListKeysResponse:
        keys = await self.plane.list_keys(message.tenant)
        return pb.ListKeysResponse(keys=[key_message(key) for key in keys])

    async def RevokeKey(  # type: ignore[override]
        self, message: pb.RevokeKeyRequest, request: Any
    ) -> pb.RevokeKeyResponse:
        return await self._answer(request, self._revoke_key, message)

    async def _revoke_key(self, message: pb.RevokeKeyRequest) -> pb.RevokeKeyResponse:
        await self.plane.revoke_key(message.tenant, message.id)
        return pb.RevokeKeyResponse()

    # Gateways and resets.

    async def ListGateways(  # type: ignore[override]
        self, message: pb.ListGatewaysRequest, request: Any
    ) -> pb.ListGatewaysResponse:
        return await self._answer(request, self._list_gateways, message)

    async def _list_gateways(self, message: pb.ListGatewaysRequest) -> pb.ListGatewaysResponse:
        gateways = await self.plane.list_gateways()
        return pb.ListGatewaysResponse(gateways=[gateway_message(g) for g in gateways])

    async def ResetCounters(  # type: ignore[override]
        self, message: pb.ResetCountersRequest, request: Any
    ) -> pb.Reset:
        return await self._answer(request, self._reset_counters, message)

    async def _reset_counters(self, message: pb.ResetCountersRequest) -> pb.Reset:
        # proto3 cannot tell an empty resource from none: both reset every
        # resource, as leaving resource out does over REST (where "" is a 400).
        resource = message.resource or None
        return reset_message(await self.plane.reset(message.tenant, resource))


class ControlGrpcServer(GrpcListener):
    """The control plane's gRPC listener: ``helios.v1.ControlService``.

    Every call needs one of ``admin_keys`` (the keys, or a
    :class:`~helios.gateway.auth.KeyRing` of them, as the REST API takes);
    with none, every call is refused. :meth:`serve`, :meth:`drain` and
    :meth:`wait_closed` work as for the gateway's
    :class:`~helios.grpc.server.GrpcServer`.
    """

    def __init__(
        self,
        plane: ControlPlane,
        admin_keys: KeyRing | Iterable[str],
        *,
        metrics: ControlMetrics | None = None,
    ) -> None:
        self.plane = plane
        keys = admin_keys if isinstance(admin_keys, KeyRing) else KeyRing(admin_keys)
        servicer = ControlServicer(plane, keys, metrics)
        super().__init__({SERVICE: servicer.service})

    async def serve(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host``:``port`` until cancelled; report the bound address.

        A failure to bind names the settings that chose the address.
        """
        status = _Started(task_status)
        try:
            await super().serve(host, port, ssl_context=ssl_context, task_status=status)
        except OSError as error:
            if status.bound:
                raise
            raise OSError(
                error.errno,
                f"cannot listen on {host}:{port} (set by control.grpc_host, control.grpc_port):"
                f" {error.strerror or error}",
            ) from None


class _Started:
    """Passes the listener's address on, and remembers that it was bound."""

    def __init__(self, outer: trio.TaskStatus[tuple[str, int]]) -> None:
        self.outer = outer
        self.bound = False

    def started(self, value: tuple[str, int] | None = None) -> None:
        assert value is not None
        self.bound = True
        self.outer.started(value)
