"""The gateway's HTTP API, driven in-process over memory streams under trio's MockClock.

Virtual time 0 is ``EPOCH_S`` (a multiple of every window used here), so the
expected figures are exact.
"""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from helios.core.names import bucket_key
from helios.gateway.service import Clock

from .support import (
    API_KEY,
    EPOCH_NS,
    EPOCH_S,
    NS,
    allow_target,
    make_gateway,
    make_server,
    open_connection,
    policy_set,
)

TOKEN_BUCKET_5_PER_MINUTE = {
    "tenant": "acme",
    "resource": "demo",
    "algorithm": "token_bucket",
    "limit": 5,
    "window": "1m",
    "burst": 5,
}
FIXED_WINDOW_5_PER_MINUTE = {
    "tenant": "acme",
    "resource": "demo",
    "algorithm": "fixed_window",
    "limit": 5,
    "window": 60,
}
BULK_10_PER_MINUTE = {
    "tenant": "acme",
    "resource": "bulk",
    "algorithm": "token_bucket",
    "limit": 10,
    "window": "1m",
}
DEMO = allow_target(tenant="acme", resource="demo")


def cost_error(shown: object) -> dict[str, str]:
    return {
        "error": f"cost must be an integer from 1 to 1000000000, got {shown!r}",
        "field": "cost",
    }


async def test_token_bucket_burst_then_exact_retry_after(
    mock_clock: trio.testing.MockClock,
) -> None:
    gateway = make_gateway(TOKEN_BUCKET_5_PER_MINUTE)
    server = make_server(gateway)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)

        for remaining in (4, 3, 2, 1, 0):
            response = await conn.get(DEMO)
            assert response.status == 200
            assert response.json["allowed"] is True
            assert response.json["remaining"] == remaining
            assert response.headers["x-ratelimit-remaining"] == str(remaining)
            assert "retry-after" not in response.headers

        response = await conn.get(DEMO)
        assert response.status == 429
        assert response.json == {
            "allowed": False,
            "tenant": "acme",
            "resource": "demo",
            "limit": 5,
            "remaining": 0,
            "reset_seconds": 60,
            "reset_time": EPOCH_S + 60,
            "retry_after_seconds": 12,
            "retry_after_ms": 12000,
            "policy": "acme/demo",
            "mode": "fast",
            "error": "rate limit exceeded",
        }
        assert response.headers["retry-after"] == "12"
        assert response.headers["x-ratelimit-limit"] == "5"
        assert response.headers["x-ratelimit-remaining"] == "0"
        assert response.headers["x-ratelimit-reset"] == str(EPOCH_S + 60)
        assert response.headers["ratelimit-policy"] == '"acme/demo";q=5;w=60'
        assert response.headers["ratelimit"] == '"acme/demo";r=0;t=12'

        mock_clock.jump(11.99)
        assert gateway.clock.now_ns() == EPOCH_NS + 11_990_000_000
        response = await conn.get(DEMO)
        assert response.status == 429
        assert response.json["retry_after_ms"] == 10
        assert response.json["retry_after_seconds"] == 1
        assert response.json["remaining"] == 0
        assert response.headers["retry-after"] == "1"

        mock_clock.jump(0.01)
        assert gateway.clock.now_ns() == EPOCH_NS + 12 * NS
        response = await conn.get(DEMO)
        assert response.status == 200
        assert response.json["remaining"] == 0
        assert response.json["retry_after_ms"] == 0
        assert response.json["reset_seconds"] == 60
        nursery.cancel_scope.cancel()


async def test_fixed_window_denies_until_the_window_ends(
    mock_clock: trio.testing.MockClock,
) -> None:
    gateway = make_gateway(FIXED_WINDOW_5_PER_MINUTE)
    server = make_server(gateway)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)

        for remaining in (4, 3, 2, 1, 0):
            response = await conn.get(DEMO)
            assert response.status == 200
            assert response.json["remaining"] == remaining
            mock_clock.jump(0.1)

        assert gateway.clock.now_ns() == EPOCH_NS + 500_000_000
        response = await conn.get(DEMO)
        assert response.status == 429
        assert response.json["retry_after_ms"] == 59500
        assert response.json["retry_after_seconds"] == 60
        assert response.json["reset_seconds"] == 60
        assert response.json["reset_time"] == EPOCH_S + 60
        assert response.headers["retry-after"] == "60"

        mock_clock.jump(59.5)
        assert gateway.clock.now_ns() == EPOCH_NS + 60 * NS
        response = await conn.get(DEMO)
        assert response.status == 200
        assert response.json["remaining"] == 4
        assert response.json["reset_time"] == EPOCH_S + 120
        nursery.cancel_scope.cancel()


async def test_clock_reads_decimal_virtual_times_to_the_nanosecond(
    mock_clock: trio.testing.MockClock,
) -> None:
    # A drained token bucket of 5 per minute refills one unit in 12 s, so at
    # t = 1.001 s the next unit is exactly 10.999 s away.
    gateway = make_gateway(TOKEN_BUCKET_5_PER_MINUTE)
    server = make_server(gateway)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        for _ in range(5):
            assert (await conn.get(DEMO)).status == 200
        mock_clock.jump(1.001)
        response = await conn.get(DEMO)
        nursery.cancel_scope.cancel()
    assert response.json["retry_after_ms"] == 10999
    assert Clock(epoch_offset_ns=0).now_ns() == 1_001_000_000


async def test_cost_above_what_is_left_is_denied_and_charges_nothing(
    mock_clock: trio.testing.MockClock,
) -> None:
    gateway = make_gateway(BULK_10_PER_MINUTE)
    server = make_server(gateway)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        response = await conn.get(allow_target(tenant="acme", resource="bulk", cost=7))
        assert (response.status, response.json["remaining"]) == (200, 3)

        key = bucket_key("acme", "bulk")
        state_before = gateway.table._shards[hash(key) & gateway.table._mask][key]
        response = await conn.get(allow_target(tenant="acme", resource="bulk", cost=4))
        assert response.status == 429
        assert response.json["remaining"] == 3
        # One more unit refills in 6 s (10 per minute).
        assert response.json["retry_after_ms"] == 6000
        assert gateway.table._shards[hash(key) & gateway.table._mask][key] is state_before

        quota = await conn.get("/api/v1/quota/acme?resource=bulk")
        assert (quota.status, quota.json["remaining"]) == (200, 3)
        response = await conn.get(allow_target(tenant="acme", resource="bulk", cost=3))
        assert (response.status, response.json["remaining"]) == (200, 0)
        nursery.cancel_scope.cancel()


async def test_cost_above_the_burst_is_a_400_naming_the_capacity(
    mock_clock: trio.testing.MockClock,
) -> None:
    gateway = make_gateway({**BULK_10_PER_MINUTE, "burst": 15})
    server = make_server(gateway)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        assert (await conn.get(allow_target(tenant="acme", resource="bulk", cost=2))).status == 200

        response = await conn.get(allow_target(tenant="acme", resource="bulk", cost=16))
        assert response.status == 400
        assert response.json["field"] == "cost"
        assert "capacity 15" in response.json["error"]
        assert "never" in response.json["error"]
        assert "retry-after" not in response.headers

        response = await conn.post_json(
            "/api/v1/allow", {"tenant": "acme", "resource": "bulk", "cost": 16}
        )
        assert response.status == 400
        assert response.json["field"] == "cost"
        assert "capacity 15" in response.json["error"]

        quota = await conn.get("/api/v1/quota/acme?resource=bulk")
        assert quota.json["remaining"] == 13
        # The whole burst is a valid cost; it fails now only because 2 are spent.
        response = await conn.get(allow_target(tenant="acme", resource="bulk", cost=13))
        assert (response.status, response.json["remaining"]) == (200, 0)
        nursery.cancel_scope.cancel()


# (raw text in the query string, the cost the server decodes it to)
BAD_QUERY_COSTS = [
    ("0", "0"),
    ("-1", "-1"),
    ("1.5", "1.5"),
    ("%2B1", "+1"),
    ("+1", " 1"),  # '+' in a query string is a space
    ("%201", " 1"),
    ("1_000", "1_000"),
    ("%D9%A3", "\u0663"),  # ARABIC-INDIC DIGIT THREE
    ("%EF%BC%91", "\uff11"),  # FULLWIDTH DIGIT ONE
    ("10000000000", "10000000000"),
    ("1000000001", "1000000001"),
    ("", ""),
]


@pytest.mark.parametrize("path", ["/allow", "/api/v1/allow"])
@pytest.mark.parametrize(("raw", "decoded"), BAD_QUERY_COSTS)
async def test_bad_cost_in_query_is_a_400_naming_cost_and_charges_nothing(
    mock_clock: trio.testing.MockClock, path: str, raw: str, decoded: str
) -> None:
    gateway = make_gateway(BULK_10_PER_MINUTE)
    server = make_server(gateway)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        assert (await conn.get(f"{path}?tenant=acme&resource=bulk&cost=2")).json["remaining"] == 8

        response = await conn.get(f"{path}?tenant=acme&resource=bulk&cost={raw}")
        assert response.status == 400
        assert response.json == cost_error(decoded)
        response = await conn.request("POST", f"{path}?tenant=acme&resource=bulk&cost={raw}")
        assert response.status == 400
        assert response.json == cost_error(decoded)

        quota = await conn.get("/api/v1/quota/acme?resource=bulk")
        assert quota.json["remaining"] == 8
        assert gateway.allowed == 1 and gateway.denied == 0
        nursery.cancel_scope.cancel()


BAD_JSON_COSTS = [
    0,
    -1,
    1.5,
    "1.5",
    "+1",
    " 1",
    "1 ",
    "1_000",
    "\u0663",
    10000000000,
    "",
    True,
    [1],
]


@pytest.mark.parametrize("cost", BAD_JSON_COSTS, ids=repr)
async def test_bad_cost_in_json_body_is_a_400_naming_cost_and_charges_nothing(
    mock_clock: trio.testing.MockClock, cost: object
) -> None:
    gateway = make_gateway(BULK_10_PER_MINUTE)
    server = make_server(gateway)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        document = {"tenant": "acme", "resource": "bulk", "cost": 2}
        assert (await conn.post_json("/api/v1/allow", document)).json["remaining"] == 8

        response = await conn.post_json("/api/v1/allow", {**document, "cost": cost})
        assert response.status == 400
        if isinstance(cost, str):
            assert response.json == cost_error(cost)
        else:
            # A JSON value is shown as JSON: true, [1].
            shown = json.dumps(cost)
            assert response.json == {
                "error": f"cost must be an integer from 1 to 1000000000, got {shown}",
                "field": "cost",
            }

        quota = await conn.get("/api/v1/quota/acme?resource=bulk")
        assert quota.json["remaining"] == 8
        nursery.cancel_scope.cancel()


async def test_good_costs_in_json_body_and_query(mock_clock: trio.testing.MockClock) -> None:
    gateway = make_gateway(BULK_10_PER_MINUTE)
    server = make_server(gateway)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        response = await conn.post_json(
            "/api/v1/allow", {"tenant": "acme", "resource": "bulk", "cost": 3}
        )
        assert response.json["remaining"] == 7
        response = await conn.post_json(
            "/api/v1/allow", {"tenant": "acme", "resource": "bulk", "cost": "2"}
        )
        assert response.json["remaining"] == 5
        response = await conn.post_json("/api/v1/allow", {"tenant": "acme", "resource": "bulk"})
        assert response.json["remaining"] == 4
        response = await conn.get("/allow?tenant=acme&resource=bulk&cost=0002")
        assert response.json["remaining"] == 2
        response = await conn.get("/allow?tenant=acme&resource=bulk")
        assert response.json["remaining"] == 1
        nursery.cancel_scope.cancel()


async def test_colon_in_tenant_or_resource_never_shares_a_counter(
    mock_clock: trio.testing.MockClock,
) -> None:
    gateway = make_gateway(
        {"tenant": "*", "resource": "*", "algorithm": "fixed_window", "limit": 2, "window": "1m"}
    )
    server = make_server(gateway)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        for remaining in (1, 0):
            response = await conn.get(allow_target(tenant="a:b", resource="c"))
            assert (response.status, response.json["remaining"]) == (200, remaining)
        assert (await conn.get(allow_target(tenant="a:b", resource="c"))).status == 429

        response = await conn.get(allow_target(tenant="a", resource="b:c"))
        assert (response.status, response.json["remaining"]) == (200, 1)
        assert response.json["tenant"] == "a"
        assert response.json["resource"] == "b:c"
        # And the same through a JSON body, with characters that need quoting.
        pairs = [("a/b", "{c}"), ("a", "b/{c}"), ("日本 ü", "x"), ("日本", " üx")]
        for tenant, resource in pairs:
            response = await conn.post_json(
                "/api/v1/allow", {"tenant": tenant, "resource": resource}
            )
            assert (response.status, response.json["remaining"]) == (200, 1)
        nursery.cancel_scope.cancel()


async def test_no_matching_policy_is_a_404_naming_tenant_and_resource(
    mock_clock: trio.testing.MockClock,
) -> None:
    gateway = make_gateway(BULK_10_PER_MINUTE)
    server = make_server(gateway)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        response = await conn.get(allow_target(tenant="globex", resource="search"))
        assert response.status == 404
        assert response.json == {
            "error": "no policy matches tenant 'globex' and resource 'search'",
            "field": "resource",
        }
        response = await conn.post_json("/api/v1/allow", {"tenant": "acme", "resource": "bulky"})
        assert response.status == 404
        assert "'acme'" in response.json["error"]
        assert "'bulky'" in response.json["error"]
        nursery.cancel_scope.cancel()


async def test_api_key_is_required_and_checked(mock_clock: trio.testing.MockClock) -> None:
    gateway = make_gateway(BULK_10_PER_MINUTE)
    server = make_server(gateway)
    target = allow_target(tenant="acme", resource="bulk")
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        response = await conn.get(target, api_key=None)
        assert (response.status, response.json["field"]) == (401, "api_key")
        response = await conn.get(target, api_key="wrong")
        assert (response.status, response.json) == (
            401,
            {"error": "unknown API key", "field": "api_key"},
        )
        response = await conn.get(
            target, api_key=None, headers=[("authorization", f"Bearer {API_KEY}")]
        )
        assert response.status == 200
        response = await conn.get(f"{target}&api_key={API_KEY}", api_key=None)
        assert (response.status, response.json["remaining"]) == (200, 8)
        nursery.cancel_scope.cancel()


async def test_concurrent_clients_on_one_key_admit_exactly_the_limit(
    mock_clock: trio.testing.MockClock,
) -> None:
    gateway = make_gateway({**FIXED_WINDOW_5_PER_MINUTE, "limit": 7})
    server = make_server(gateway)
    statuses: list[int] = []
    remaining: list[int] = []

    async def client(nursery: trio.Nursery) -> None:
        conn = open_connection(nursery, server)
        response = await conn.get(DEMO)
        statuses.append(response.status)
        if response.status == 200:
            remaining.append(response.json["remaining"])

    async with trio.open_nursery() as servers:
        async with trio.open_nursery() as clients:
            for _ in range(25):
                clients.start_soon(client, servers)
        servers.cancel_scope.cancel()
    assert statuses.count(200) == 7
    assert statuses.count(429) == 18
    assert sorted(remaining) == [0, 1, 2, 3, 4, 5, 6]
    assert trio.current_time() == 0.0


async def test_policy_reload_keeps_spent_units(mock_clock: trio.testing.MockClock) -> None:
    gateway = make_gateway(BULK_10_PER_MINUTE)
    server = make_server(gateway)
    target = allow_target(tenant="acme", resource="bulk", cost=7)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        assert (await conn.get(target)).json["remaining"] == 3

        gateway.set_policies(policy_set({**BULK_10_PER_MINUTE, "limit": 20}))
        quota = await conn.get("/api/v1/quota/acme?resource=bulk")
        assert (quota.json["limit"], quota.json["remaining"]) == (20, 13)

        gateway.set_policies(policy_set({**BULK_10_PER_MINUTE, "limit": 5}))
        response = await conn.get(allow_target(tenant="acme", resource="bulk"))
        assert (response.status, response.json["remaining"]) == (429, 0)
        assert response.json["retry_after_ms"] == 36_000
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("tenant=a%01b&resource=r", "tenant"),
        ("tenant=acme&resource=r%7Fx", "resource"),
        ("tenant=acme&resource=r%0Ax", "resource"),
        ("resource=r", "tenant"),
        ("tenant=&resource=r", "tenant"),
        (f"tenant={'t' * 257}&resource=r", "tenant"),
        ("tenant=acme&resource=r&resource=s", "resource"),
    ],
)
async def test_bad_names_are_a_400_naming_the_field(
    mock_clock: trio.testing.MockClock, query: str, field: str
) -> None:
    gateway = make_gateway({"tenant": "*", "resource": "*", "limit": 3, "window": "1m"})
    server = make_server(gateway)
    async with trio.open_nursery() as nursery:
        conn = open_connection(nursery, server)
        response = await conn.get(f"/allow?{query}")
        assert (response.status, response.json["field"]) == (400, field)
        nursery.cancel_scope.cancel()
    assert len(gateway.table) == 0
