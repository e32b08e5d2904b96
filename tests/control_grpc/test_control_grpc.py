"""helios.v1.ControlService served by ControlGrpcServer, driven by a grpcio client."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
import trio
from control_grpc_support import ADMIN, ADMIN_KEY, NOW_TEXT, Control, StartControl

from helios.control.grpc import ControlGrpcServer
from helios.control.model import GatewayInfo, Layout, dump
from helios.errors import HeliosError
from helios.gateway.auth import KeyRing, digest
from helios.grpc.generated.helios.v1 import control_pb2 as pb
from helios.store.kv import Compare, MemoryStore, Operation, Put, StoreUnavailable

Code = grpc.StatusCode


def rest_shape(policy: pb.Policy) -> dict[str, Any]:
    """A Policy message in the JSON shape of the REST API (``StoredPolicy.to_dict()``)."""
    bands = []
    for band in policy.bands:
        entry: dict[str, Any] = {"limit": band.limit, "window": band.window}
        if band.calendar:
            entry["calendar"] = True
        if band.HasField("burst"):
            entry["burst"] = band.burst
        bands.append(entry)
    shape: dict[str, Any] = {
        "tenant": policy.tenant,
        "resource": policy.resource,
        "algorithm": policy.algorithm,
        "bands": bands,
        "shadow": policy.shadow,
        "failure_mode": policy.failure_mode,
        "revision": policy.revision,
    }
    if policy.description:
        shape["description"] = policy.description
    return shape


def put(tenant: str, resource: str, policy: pb.Policy, **fields: Any) -> pb.PutPolicyRequest:
    return pb.PutPolicyRequest(tenant=tenant, resource=resource, policy=policy, **fields)


ONE_PER_SECOND = pb.Policy(
    algorithm="fixed_window", bands=[pb.Band(limit=1, window="1s")], description="one"
)


async def create(control: Control, *names: str) -> list[pb.Tenant]:
    return [await control.call("CreateTenant", pb.CreateTenantRequest(name=n)) for n in names]


# Tenants.


async def test_tenant_lifecycle(control: Control) -> None:
    created = await control.call(
        "CreateTenant", pb.CreateTenantRequest(name="acme", description="Acme Inc.")
    )
    assert (created.name, created.description, created.created_at) == (
        "acme",
        "Acme Inc.",
        NOW_TEXT,
    )
    assert created.revision == control.store.revision
    assert await control.call("GetTenant", pb.GetTenantRequest(name="acme")) == created
    # The same document the REST API shows.
    assert (await control.plane.get_tenant("acme")).to_dict() == {
        "name": created.name,
        "description": created.description,
        "created_at": created.created_at,
        "revision": created.revision,
    }

    updated = await control.call(
        "UpdateTenant",
        pb.UpdateTenantRequest(name="acme", description="Acme", expected_revision=created.revision),
    )
    assert updated.description == "Acme"
    assert updated.revision > created.revision
    assert updated.created_at == NOW_TEXT

    code, message = await control.fail("CreateTenant", pb.CreateTenantRequest(name="acme"))
    assert code == Code.ALREADY_EXISTS
    assert message == "tenant 'acme' already exists"

    await control.call(
        "DeleteTenant", pb.DeleteTenantRequest(name="acme", expected_revision=updated.revision)
    )
    code, message = await control.fail("GetTenant", pb.GetTenantRequest(name="acme"))
    assert (code, message) == (Code.NOT_FOUND, "tenant 'acme' does not exist")
    assert (await control.fail("DeleteTenant", pb.DeleteTenantRequest(name="acme")))[0] == (
        Code.NOT_FOUND
    )


async def test_delete_tenant_takes_its_policies_and_keys(control: Control) -> None:
    await create(control, "acme")
    await control.call("PutPolicy", put("acme", "search", ONE_PER_SECOND))
    await control.call("IssueKey", pb.IssueKeyRequest(tenant="acme"))
    await control.call("DeleteTenant", pb.DeleteTenantRequest(name="acme"))
    await create(control, "acme")
    policies = await control.call("ListPolicies", pb.ListPoliciesRequest(tenant="acme"))
    keys = await control.call("ListKeys", pb.ListKeysRequest(tenant="acme"))
    assert (list(policies.policies), list(keys.keys)) == ([], [])


async def test_list_tenants_in_pages(control: Control) -> None:
    names = ["a", "b*", "c", "d", "e"]
    await create(control, *reversed(names))

    seen: list[str] = []
    tokens: list[str] = []
    token = ""
    while True:
        page = await control.call(
            "ListTenants", pb.ListTenantsRequest(page_size=2, page_token=token)
        )
        seen.extend(tenant.name for tenant in page.tenants)
        token = page.next_page_token
        tokens.append(token)
        if not token:
            break
    assert seen == names
    assert tokens == ["b*", "d", ""]

    everything = await control.call("ListTenants", pb.ListTenantsRequest())
    assert [t.name for t in everything.tenants] == names
    assert everything.next_page_token == ""


async def test_page_size_zero_is_the_default_and_too_large_the_most(control: Control) -> None:
    for index in range(1001):
        await control.plane.create_tenant(f"t{index:04}")
    default = await control.call("ListTenants", pb.ListTenantsRequest())
    assert len(default.tenants) == 100
    assert default.next_page_token == "t0099"
    most = await control.call("ListTenants", pb.ListTenantsRequest(page_size=5000))
    assert len(most.tenants) == 1000
    last = await control.call(
        "ListTenants", pb.ListTenantsRequest(page_size=5000, page_token=most.next_page_token)
    )
    assert [t.name for t in last.tenants] == ["t1000"]
    assert last.next_page_token == ""


# Policies.


async def test_policy_lifecycle(control: Control) -> None:
    await create(control, "acme")
    first = await control.call("PutPolicy", put("acme", "search", ONE_PER_SECOND))
    assert first.created
    assert first.policy.revision == control.store.revision
    assert rest_shape(first.policy) == {
        "tenant": "acme",
        "resource": "search",
        "algorithm": "fixed_window",
        "bands": [{"limit": 1, "window": "1s"}],
        "shadow": False,
        "failure_mode": "local",
        "description": "one",
        "revision": first.policy.revision,
    }

    two = pb.Policy(bands=[pb.Band(limit=2, window="1m")])
    second = await control.call(
        "PutPolicy", put("acme", "search", two, expected_revision=first.policy.revision)
    )
    assert not second.created
    # The defaults are filled in: token_bucket with burst = limit, failure mode local.
    assert rest_shape(second.policy)["bands"] == [{"limit": 2, "window": "1m", "burst": 2}]
    assert second.policy.algorithm == "token_bucket"

    got = await control.call("GetPolicy", pb.GetPolicyRequest(tenant="acme", resource="search"))
    assert got == second.policy
    await control.call("PutPolicy", put("acme", "user:*", ONE_PER_SECOND))
    listed = await control.call("ListPolicies", pb.ListPoliciesRequest(tenant="acme"))
    assert [p.resource for p in listed.policies] == ["search", "user:*"]

    await control.call(
        "DeletePolicy",
        pb.DeletePolicyRequest(
            tenant="acme", resource="search", expected_revision=second.policy.revision
        ),
    )
    code, message = await control.fail(
        "GetPolicy", pb.GetPolicyRequest(tenant="acme", resource="search")
    )
    assert (code, message) == (
        Code.NOT_FOUND,
        "tenant 'acme' has no policy for resource 'search'",
    )
    code, _ = await control.fail("PutPolicy", put("nobody", "search", ONE_PER_SECOND))
    assert code == Code.NOT_FOUND


async def test_policy_reads_back_as_the_rest_document(control: Control) -> None:
    await create(control, "acme")
    policies = {
        "search": pb.Policy(
            algorithm="fixed_window",
            bands=[
                pb.Band(limit=3, window="1s"),
                pb.Band(limit=100, window="day", calendar=True),
            ],
            shadow=True,
            failure_mode="closed",
            description="searches",
        ),
        "upload": pb.Policy(
            algorithm="token_bucket", bands=[pb.Band(limit=10, window="1m", burst=20)]
        ),
        "feed": pb.Policy(algorithm="sliding_window", bands=[pb.Band(limit=5, window="10s")]),
    }
    # What a REST client sends for the same policies.
    documents = {
        "search": {
            "algorithm": "fixed_window",
            "bands": [
                {"limit": 3, "window": "1s"},
                {"limit": 100, "window": "day", "calendar": True},
            ],
            "shadow": True,
            "failure_mode": "closed",
            "description": "searches",
        },
        "upload": {
            "algorithm": "token_bucket",
            "bands": [{"limit": 10, "window": "1m", "burst": 20}],
        },
        "feed": {"algorithm": "sliding_window", "bands": [{"limit": 5, "window": "10s"}]},
    }
    await create(control, "rest")
    for resource, policy in policies.items():
        reply = await control.call("PutPolicy", put("acme", resource, policy))
        stored = await control.plane.get_policy("acme", resource)
        assert rest_shape(reply.policy) == stored.to_dict()
        got = await control.call("GetPolicy", pb.GetPolicyRequest(tenant="acme", resource=resource))
        assert rest_shape(got) == stored.to_dict()

        over_rest, _ = await control.plane.put_policy("rest", resource, documents[resource])
        expected = {**over_rest.to_dict(), "tenant": "acme", "revision": stored.revision}
        assert stored.to_dict() == expected


async def test_policy_output_fields_are_not_input(control: Control) -> None:
    await create(control, "acme")
    policy = pb.Policy()
    policy.CopyFrom(ONE_PER_SECOND)
    policy.tenant, policy.resource, policy.revision = "other", "elsewhere", 99
    reply = await control.call("PutPolicy", put("acme", "search", policy))
    assert (reply.policy.tenant, reply.policy.resource) == ("acme", "search")
    assert reply.policy.revision == control.store.revision


# Revisions.


async def test_stale_expected_revision_is_aborted(control: Control) -> None:
    (tenant,) = await create(control, "acme")
    put_reply = await control.call("PutPolicy", put("acme", "search", ONE_PER_SECOND))
    await control.call(
        "UpdateTenant", pb.UpdateTenantRequest(name="acme", description="now")
    )  # the tenant moves on
    revision = control.store.revision
    stale: list[tuple[str, Any]] = [
        ("UpdateTenant", pb.UpdateTenantRequest(name="acme", expected_revision=tenant.revision)),
        ("DeleteTenant", pb.DeleteTenantRequest(name="acme", expected_revision=tenant.revision)),
        (
            "PutPolicy",
            put("acme", "search", ONE_PER_SECOND, expected_revision=tenant.revision),
        ),
        (
            "DeletePolicy",
            pb.DeletePolicyRequest(
                tenant="acme", resource="search", expected_revision=put_reply.policy.revision - 1
            ),
        ),
    ]
    for method, request in stale:
        code, message = await control.fail(method, request)
        assert code == Code.ABORTED, method
        assert "was changed by someone else" in message
        now = revision if "Tenant" in method else put_reply.policy.revision
        assert f"(now at revision {now})" in message
    # 0: only if there is no policy yet.
    code, message = await control.fail(
        "PutPolicy", put("acme", "search", ONE_PER_SECOND, expected_revision=0)
    )
    assert code == Code.ALREADY_EXISTS
    assert "already exists" in message
    assert control.store.revision == revision

    # 0 creates a policy that does not exist yet.
    created = await control.call(
        "PutPolicy", put("acme", "other", ONE_PER_SECOND, expected_revision=0)
    )
    assert created.created


async def test_concurrent_updates_with_one_revision_one_wins(control: Control) -> None:
    (tenant,) = await create(control, "acme")
    outcomes: list[Any] = []

    async def update(description: str) -> None:
        request = pb.UpdateTenantRequest(
            name="acme", description=description, expected_revision=tenant.revision
        )
        try:
            outcomes.append(await control.call("UpdateTenant", request))
        except grpc.RpcError as error:
            outcomes.append(error.code())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(update, "first")
        nursery.start_soon(update, "second")
    (winner,) = [o for o in outcomes if isinstance(o, pb.Tenant)]
    assert outcomes.count(Code.ABORTED) == 1
    assert (await control.plane.get_tenant("acme")).description == winner.description


class RacingStore(MemoryStore):
    """Once armed, holds each commit until two are waiting: both writers read first."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self._waiting = 0
        self._both = trio.Event()

    async def commit(
        self, compares: Sequence[Compare], operations: Sequence[Operation]
    ) -> int | None:
        if self.armed:
            self._waiting += 1
            if self._waiting == 2:
                self._both.set()
            await self._both.wait()
        return await super().commit(compares, operations)


async def test_two_concurrent_writers_one_is_aborted(start_control: StartControl) -> None:
    store = RacingStore()
    control = await start_control(store)
    await control.plane.create_tenant("acme")
    store.armed = True
    outcomes: list[Any] = []

    async def write(limit: int) -> None:
        policy = pb.Policy(algorithm="fixed_window", bands=[pb.Band(limit=limit, window="1s")])
        try:
            outcomes.append(await control.call("PutPolicy", put("acme", "search", policy)))
        except grpc.RpcError as error:
            outcomes.append((error.code(), error.details()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, 1)
        nursery.start_soon(write, 2)
    (winner,) = [o for o in outcomes if isinstance(o, pb.PutPolicyResponse)]
    (loser,) = [o for o in outcomes if isinstance(o, tuple)]
    assert winner.created
    assert loser[0] == Code.ABORTED
    assert loser[1].startswith("policy acme/search was changed by someone else")
    stored = await control.plane.get_policy("acme", "search")
    assert rest_shape(winner.policy) == stored.to_dict()


# Validation.

BAND = {"limit": 1, "window": "1s"}
BAND_OK = pb.Band(limit=1, window="1s")

INVALID = [
    pytest.param(
        pb.Policy(algorithm="leaky_bucket", bands=[pb.Band(limit=1, window="1s")]),
        {"algorithm": "leaky_bucket", "bands": [BAND]},
        "policy.algorithm must be one of token_bucket, fixed_window, sliding_window,"
        ' got "leaky_bucket"',
        id="unknown algorithm",
    ),
    pytest.param(
        pb.Policy(bands=[pb.Band(limit=1, window="fortnight")]),
        {"bands": [{"limit": 1, "window": "fortnight"}]},
        "policy.bands[0].window must be a number of seconds or a duration like",
        id="unparsable window",
    ),
    pytest.param(
        pb.Policy(bands=[pb.Band(limit=1)]),
        {"bands": [{"limit": 1}]},
        "policy.bands[0].window is required",
        id="no window",
    ),
    pytest.param(
        pb.Policy(bands=[BAND_OK, pb.Band(limit=0, window="1m")]),
        {"bands": [BAND, {"limit": 0, "window": "1m"}]},
        "policy.bands[1].limit must be an integer from 1 to 1000000000000, got 0",
        id="limit 0",
    ),
    pytest.param(
        pb.Policy(bands=[pb.Band(limit=1, window="1s", burst=0)]),
        {"bands": [{"limit": 1, "window": "1s", "burst": 0}]},
        "policy.bands[0].burst must be an integer from 1 to 1000000000000, got 0",
        id="burst 0",
    ),
    pytest.param(
        pb.Policy(algorithm="fixed_window", bands=[pb.Band(limit=1, window="1s", burst=1)]),
        {"algorithm": "fixed_window", "bands": [{"limit": 1, "window": "1s", "burst": 1}]},
        "policy.bands[0].burst applies only to token_bucket, not fixed_window",
        id="burst on fixed_window",
    ),
    pytest.param(
        pb.Policy(algorithm="token_bucket", bands=[pb.Band(limit=1, window="day", calendar=True)]),
        {"algorithm": "token_bucket", "bands": [{"limit": 1, "window": "day", "calendar": True}]},
        "policy.bands[0].calendar needs algorithm fixed_window, not token_bucket",
        id="calendar on token_bucket",
    ),
    pytest.param(
        pb.Policy(), {"bands": []}, "policy.bands must be a non-empty list", id="no bands"
    ),
    pytest.param(
        pb.Policy(bands=[BAND_OK], failure_mode="sometimes"),
        {"bands": [BAND], "failure_mode": "sometimes"},
        'policy.failure_mode must be one of open, closed, local, got "sometimes"',
        id="unknown failure mode",
    ),
    pytest.param(
        pb.Policy(bands=[pb.Band(limit=1, window="0.0015")]),
        {"bands": [{"limit": 1, "window": "0.0015"}]},
        'policy.bands[0].window must be a whole number of milliseconds, got "0.0015"',
        id="window not in whole milliseconds",
    ),
    pytest.param(
        pb.Policy(bands=[pb.Band(limit=1, window="3651d")]),
        {"bands": [{"limit": 1, "window": "3651d"}]},
        'policy.bands[0].window must be from 1ms to 10 years (315360000 seconds), got "3651d"',
        id="window over 10 years",
    ),
    pytest.param(
        pb.Policy(bands=[BAND_OK], description="d" * 1001),
        {"bands": [BAND], "description": "d" * 1001},
        "policy.description must be at most 1000 characters, got 1001",
        id="description too long",
    ),
]


@pytest.mark.parametrize(("policy", "document", "message"), INVALID)
async def test_invalid_policy_names_its_field(
    control: Control, policy: pb.Policy, document: dict[str, Any], message: str
) -> None:
    await create(control, "acme")
    revision = control.store.revision
    code, details = await control.fail("PutPolicy", put("acme", "search", policy))
    assert code == Code.INVALID_ARGUMENT
    assert details.startswith(message)
    # Word for word what the REST API answers for the same JSON.
    with pytest.raises(HeliosError) as rest:
        await control.plane.put_policy("acme", "search", document)
    assert details == rest.value.message
    assert control.store.revision == revision
    code, _ = await control.fail("GetPolicy", pb.GetPolicyRequest(tenant="acme", resource="search"))
    assert code == Code.NOT_FOUND


async def test_invalid_names_and_descriptions(control: Control) -> None:
    cases: list[tuple[str, Any, str]] = [
        # The request message's field is name, as the REST body's is.
        ("CreateTenant", pb.CreateTenantRequest(), "name is required"),
        ("CreateTenant", pb.CreateTenantRequest(name="a*b"), "name may hold '*' only at its end"),
        (
            "CreateTenant",
            pb.CreateTenantRequest(name="x", description="d" * 1001),
            "description must be at most 1000 characters, got 1001",
        ),
        (
            "UpdateTenant",
            pb.UpdateTenantRequest(name="acme", description="d" * 1001),
            "description must be at most 1000 characters, got 1001",
        ),
        (
            "IssueKey",
            pb.IssueKeyRequest(tenant="acme", description="d" * 1001),
            "description must be at most 1000 characters, got 1001",
        ),
        ("PutPolicy", put("acme", "", ONE_PER_SECOND), "resource is required"),
        ("IssueKey", pb.IssueKeyRequest(tenant="team*"), "keys are issued to one tenant"),
        ("RevokeKey", pb.RevokeKeyRequest(tenant="acme", id="../x"), "key id must be letters"),
    ]
    await create(control, "acme", "team*")
    revision = control.store.revision
    for method, request, start in cases:
        code, message = await control.fail(method, request)
        assert (code, message[: len(start)]) == (Code.INVALID_ARGUMENT, start), method
    assert control.store.revision == revision


# Authentication.

METHODS: list[tuple[str, Any]] = [
    ("CreateTenant", pb.CreateTenantRequest(name="acme")),
    ("GetTenant", pb.GetTenantRequest(name="acme")),
    ("UpdateTenant", pb.UpdateTenantRequest(name="acme")),
    ("DeleteTenant", pb.DeleteTenantRequest(name="acme")),
    ("ListTenants", pb.ListTenantsRequest()),
    ("PutPolicy", put("acme", "search", ONE_PER_SECOND)),
    ("GetPolicy", pb.GetPolicyRequest(tenant="acme", resource="search")),
    ("DeletePolicy", pb.DeletePolicyRequest(tenant="acme", resource="search")),
    ("ListPolicies", pb.ListPoliciesRequest(tenant="acme")),
    ("IssueKey", pb.IssueKeyRequest(tenant="acme")),
    ("ListKeys", pb.ListKeysRequest(tenant="acme")),
    ("RevokeKey", pb.RevokeKeyRequest(tenant="acme", id="abc")),
    ("ListGateways", pb.ListGatewaysRequest()),
    ("ResetCounters", pb.ResetCountersRequest(tenant="acme")),
    # Invalid too: the key is checked first.
    ("CreateTenant", pb.CreateTenantRequest(name="")),
]


async def test_every_method_needs_an_admin_key(control: Control) -> None:
    await create(control, "acme")
    revision = control.store.revision
    for metadata in [
        (),
        (("x-api-key", "wrong"),),
        (("x-api-key", ""),),
        (("authorization", "Bearer wrong"),),
        (("authorization", f"Basic {ADMIN_KEY}"),),
    ]:
        for method, request in METHODS:
            code, _ = await control.fail(method, request, metadata=metadata)
            assert code == Code.UNAUTHENTICATED, (method, metadata)
    assert control.store.revision == revision
    code, message = await control.fail("ListTenants", pb.ListTenantsRequest(), metadata=())
    assert message.startswith("an admin API key is required")
    code, message = await control.fail(
        "ListTenants", pb.ListTenantsRequest(), metadata=(("x-api-key", "wrong"),)
    )
    assert message == "unknown API key"


async def test_bearer_admin_key(control: Control) -> None:
    bearer = (("authorization", f"Bearer {ADMIN_KEY}"),)
    reply = await control.call("ListTenants", pb.ListTenantsRequest(), metadata=bearer)
    assert list(reply.tenants) == []


async def test_a_tenant_key_is_not_an_admin_key(start_control: StartControl) -> None:
    keys = KeyRing([ADMIN_KEY], [("acme", digest("tenant-key"))])
    control = await start_control(admin_keys=keys)
    code, message = await control.fail(
        "ListTenants", pb.ListTenantsRequest(), metadata=(("x-api-key", "tenant-key"),)
    )
    assert code == Code.PERMISSION_DENIED
    assert "needs an admin key" in message
    assert await control.call("ListTenants", pb.ListTenantsRequest())


async def test_no_admin_keys_refuses_everything(start_control: StartControl) -> None:
    control = await start_control(admin_keys=[])
    code, _ = await control.fail("ListTenants", pb.ListTenantsRequest())
    assert code == Code.UNAUTHENTICATED


# API keys.


async def test_issued_key_is_shown_once(control: Control) -> None:
    await create(control, "acme")
    issued = await control.call("IssueKey", pb.IssueKeyRequest(tenant="acme", description="ci"))
    secret = issued.key
    assert secret.startswith("hk_") and len(secret) > 40
    record = issued.api_key
    assert (record.tenant, record.description, record.created_at) == ("acme", "ci", NOW_TEXT)
    assert record.prefix == secret[:10]

    listed = await control.call("ListKeys", pb.ListKeysRequest(tenant="acme"))
    assert list(listed.keys) == [record]
    # Neither the key nor its hash is anywhere in the listing.
    wire = listed.SerializeToString()
    assert secret.encode() not in wire
    assert digest(secret).hex().encode() not in wire
    assert not any(field.name in ("key", "sha256") for field in pb.ApiKey.DESCRIPTOR.fields)

    await control.call("RevokeKey", pb.RevokeKeyRequest(tenant="acme", id=record.id))
    listed = await control.call("ListKeys", pb.ListKeysRequest(tenant="acme"))
    assert list(listed.keys) == []
    code, message = await control.fail(
        "RevokeKey", pb.RevokeKeyRequest(tenant="acme", id=record.id)
    )
    assert (code, message) == (Code.NOT_FOUND, f"tenant 'acme' has no API key {record.id!r}")


# Gateways and resets.


async def test_gateways_and_resets(control: Control) -> None:
    layout = Layout()
    gateway = GatewayInfo("gw-1", "10.0.0.5:8080", "strong", "1.2.3", 7, 1_800_000_100.0)
    lease = await control.store.grant_lease(30)
    await control.store.commit(
        [], [Put(layout.gateway(gateway.id), dump(gateway.document()), lease=lease)]
    )
    listed = await control.call("ListGateways", pb.ListGatewaysRequest())
    assert [
        (g.id, g.address, g.mode, g.version, g.revision, g.started_at) for g in listed.gateways
    ] == [("gw-1", "10.0.0.5:8080", "strong", "1.2.3", 7, "2027-01-15T08:01:40Z")]

    await create(control, "acme")
    one = await control.call(
        "ResetCounters", pb.ResetCountersRequest(tenant="acme", resource="search")
    )
    assert (one.tenant, one.resource, one.created_at) == ("acme", "search", NOW_TEXT)
    every = await control.call("ResetCounters", pb.ResetCountersRequest(tenant="acme"))
    assert not every.HasField("resource")
    # proto3 sends an empty resource as none: every resource, as documented
    # (REST, which can tell them apart, refuses "").
    empty = await control.call("ResetCounters", pb.ResetCountersRequest(tenant="acme", resource=""))
    assert not empty.HasField("resource")
    resets, _ = await control.store.range(layout.resets())
    assert sorted(entry.key for entry in resets) == sorted(
        [layout.reset(one.id), layout.reset(every.id), layout.reset(empty.id)]
    )
    code, _ = await control.fail("ResetCounters", pb.ResetCountersRequest(tenant="nobody"))
    assert code == Code.NOT_FOUND


async def test_a_reset_is_for_one_tenant_and_one_resource_as_in_rest(control: Control) -> None:
    await create(control, "team-*")
    revision = control.store.revision
    code, message = await control.fail("ResetCounters", pb.ResetCountersRequest(tenant="team-*"))
    assert (code, message) == (
        Code.INVALID_ARGUMENT,
        "counters are reset for one tenant, not for the pattern 'team-*'; name a tenant it matches",
    )
    code, message = await control.fail(
        "ResetCounters", pb.ResetCountersRequest(tenant="team-a", resource="*")
    )
    assert code == Code.INVALID_ARGUMENT
    assert "leave resource out to reset every resource" in message
    assert control.store.revision == revision

    # A tenant whose record is a pattern's.
    reset = await control.call(
        "ResetCounters", pb.ResetCountersRequest(tenant="team-a", resource="x")
    )
    assert (reset.tenant, reset.resource) == ("team-a", "x")


# The store and the listener.


class DownStore(MemoryStore):
    """A store that cannot answer."""

    async def get(self, key: str) -> Any:
        raise StoreUnavailable("the store did not answer within 2 s")

    async def range(self, prefix: str, *, start_after: str = "", limit: int = 0) -> Any:
        raise StoreUnavailable("the store did not answer within 2 s")


async def test_store_failure_is_unavailable(start_control: StartControl) -> None:
    control = await start_control(DownStore())
    for method, request in [
        ("GetTenant", pb.GetTenantRequest(name="acme")),
        ("ListTenants", pb.ListTenantsRequest()),
        ("ListGateways", pb.ListGatewaysRequest()),
    ]:
        code, message = await control.fail(method, request)
        assert (code, message) == (Code.UNAVAILABLE, "the store did not answer within 2 s")


async def test_message_that_does_not_parse(control: Control) -> None:
    def call() -> Code:
        with grpc.insecure_channel("{}:{}".format(*control.address)) as channel:
            raw = channel.unary_unary("/helios.v1.ControlService/GetTenant")
            try:
                raw(b"\xff\xff\xff", metadata=(("x-api-key", ADMIN_KEY),), timeout=10)
            except grpc.RpcError as error:
                return error.code()  # type: ignore[no-any-return]
        raise AssertionError("the call succeeded")

    assert await trio.to_thread.run_sync(call) == Code.INVALID_ARGUMENT


async def test_binds_the_configured_host_only(control: Control) -> None:
    host, port = control.address
    assert host == "127.0.0.1"
    with socket.socket() as probe:
        probe.bind(("127.0.0.2", port))


async def test_bind_error_names_the_settings(control: Control) -> None:
    _, port = control.address
    second = ControlGrpcServer(control.plane, [ADMIN_KEY])
    with pytest.raises(OSError, match=r"control\.grpc_host, control\.grpc_port") as error:
        await second.serve("127.0.0.1", port)
    assert f"127.0.0.1:{port}" in str(error.value)


async def test_drain_finishes_and_closes(control: Control) -> None:
    await create(control, "acme")
    assert control.server.connections == 1
    control.server.drain()
    with trio.fail_after(10):
        await control.server.wait_closed()
    assert control.server.connections == 0


async def test_calls_are_counted_and_logged_without_their_key(
    control: Control, caplog: pytest.LogCaptureFixture
) -> None:
    from helios.control.metrics import ControlMetrics

    metrics = ControlMetrics()
    counted = ControlGrpcServer(control.plane, [ADMIN_KEY], metrics=metrics)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(counted.serve, "127.0.0.1", 0)

        def calls() -> None:
            with grpc.insecure_channel(f"{host}:{port}") as channel:
                create = channel.unary_unary(
                    "/helios.v1.ControlService/CreateTenant",
                    request_serializer=pb.CreateTenantRequest.SerializeToString,
                    response_deserializer=pb.Tenant.FromString,
                )
                create(pb.CreateTenantRequest(name="acme"), metadata=ADMIN, timeout=10)
                with pytest.raises(grpc.RpcError):
                    create(pb.CreateTenantRequest(name="acme"), metadata=ADMIN, timeout=10)
                with pytest.raises(grpc.RpcError):
                    create(
                        pb.CreateTenantRequest(name="x"),
                        metadata=(("x-api-key", "wrong-key"),),
                        timeout=10,
                    )

        with caplog.at_level("INFO", logger="helios.control.access"):
            await trio.to_thread.run_sync(calls)
        counted.drain()
        nursery.cancel_scope.cancel()
    route = "/helios.v1.ControlService/CreateTenant"
    assert metrics.requests == {
        ("GRPC", route, 200): 1,
        ("GRPC", route, 409): 1,
        ("GRPC", route, 401): 1,
    }
    lines = [record.getMessage() for record in caplog.records]
    assert [line.split()[3] for line in lines] == ["200", "409", "401"]
    assert not any(ADMIN_KEY in line or "wrong-key" in line for line in lines)
