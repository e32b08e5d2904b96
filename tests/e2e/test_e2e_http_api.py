"""The data-plane HTTP API of PRODUCT §4 against the real process: routes, keys, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import API_KEY, HeliosProcess, running_helios

pytestmark = pytest.mark.slow

MAX_BODY_BYTES = 512

# No catch-all policy: tenants outside acme and t-* have no policy at all.
POLICIES = """\
[[policies]]
tenant = "acme"
resource = "demo"
limit = 10
window = "1m"

[[policies]]
tenant = "t-*"
resource = "*"
limit = 5
window = "1h"
"""


@pytest.fixture(scope="module")
def helios(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeliosProcess]:
    directory: Path = tmp_path_factory.mktemp("http-api")
    settings = {"HELIOS_HTTP_MAX_BODY_BYTES": str(MAX_BODY_BYTES)}
    with running_helios(directory, policies=POLICIES, settings=settings) as process:
        yield process


@pytest.fixture
def client(helios: HeliosProcess) -> Iterator[httpx.Client]:
    with helios.client() as client:
        yield client


KEY = {"X-API-Key": API_KEY}


def assert_error(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert isinstance(body["error"], str) and body["error"]
    if field is not None:
        assert body["field"] == field
    return body


# 400


@pytest.mark.parametrize(
    "cost",
    ["0", "-1", "1.5", "%2B1", "%201", "1_000", "%D9%A1", "1000000001", "", "one", "0x10"],
)
def test_bad_cost_is_400_naming_cost(client: httpx.Client, cost: str) -> None:
    response = client.get(f"/allow?tenant=t-cost&resource=r&cost={cost}", headers=KEY)
    assert_error(response, 400, "cost")


def test_cost_above_every_band_capacity_is_400_saying_it_can_never_succeed(
    client: httpx.Client,
) -> None:
    response = client.get("/allow?tenant=t-capacity&resource=r&cost=6", headers=KEY)
    body = assert_error(response, 400, "cost")
    assert "never" in body["error"]


def test_missing_tenant_is_400_naming_tenant(client: httpx.Client) -> None:
    response = client.get("/allow?resource=demo", headers=KEY)
    assert_error(response, 400, "tenant")


def test_post_with_invalid_json_body_is_400(client: httpx.Client) -> None:
    response = client.post("/api/v1/allow", content=b"{not json", headers=KEY)
    assert_error(response, 400, "body")


# 401


def test_no_api_key_is_401(client: httpx.Client) -> None:
    response = client.get("/allow?tenant=t-nokey&resource=r")
    body = assert_error(response, 401)
    assert body.get("field") in (None, "api_key")


def test_unknown_api_key_is_401_and_never_logged(
    helios: HeliosProcess, client: httpx.Client
) -> None:
    secret = "not-a-key-7d1c0e"
    for response in (
        client.get("/allow?tenant=t-badkey&resource=r", headers={"X-API-Key": secret}),
        client.get(
            "/allow?tenant=t-badkey&resource=r", headers={"Authorization": f"Bearer {secret}"}
        ),
        client.get(f"/allow?tenant=t-badkey&resource=r&api_key={secret}"),
    ):
        body = assert_error(response, 401)
        assert body.get("field") in (None, "api_key")
        assert secret not in response.text
    assert secret not in helios.log()
    assert API_KEY not in helios.log()


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"X-API-Key": API_KEY}, ""),
        ({"Authorization": f"Bearer {API_KEY}"}, ""),
        ({}, f"&api_key={API_KEY}"),
    ],
    ids=["x-api-key", "authorization-bearer", "api_key-parameter"],
)
def test_each_way_of_passing_the_key_is_accepted(
    client: httpx.Client, headers: dict[str, str], query: str
) -> None:
    tenant = f"t-key-{'-'.join(headers) or 'query'}"
    response = client.get(f"/allow?tenant={tenant}&resource=r{query}", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["allowed"] is True
    assert response.json()["remaining"] == 4


# 404


def test_no_matching_policy_is_404_naming_tenant_and_resource(client: httpx.Client) -> None:
    response = client.get("/allow?tenant=nobody&resource=thing", headers=KEY)
    body = assert_error(response, 404)
    assert "nobody" in body["error"]
    assert "thing" in body["error"]


def test_unknown_route_is_404(client: httpx.Client) -> None:
    assert_error(client.get("/no/such/route", headers=KEY), 404)


# 405


def test_wrong_method_is_405_with_allow_header(client: httpx.Client) -> None:
    response = client.delete("/allow?tenant=t-405&resource=r", headers=KEY)
    assert_error(response, 405)
    allowed = {method.strip() for method in response.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allowed
    assert "DELETE" not in allowed

    response = client.get("/api/v1/allow/batch", headers=KEY)
    assert_error(response, 405)
    assert [method.strip() for method in response.headers["allow"].split(",")] == ["POST"]


# 413, 431


def test_body_over_the_configured_maximum_is_413(client: httpx.Client) -> None:
    body = b'{"tenant": "t-413", "resource": "r", "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    assert_error(client.post("/api/v1/allow", content=body, headers=KEY), 413)


def test_chunked_body_over_the_configured_maximum_is_413(client: httpx.Client) -> None:
    def chunks(count: int) -> Iterator[bytes]:
        yield b'{"tenant": "t-chunked", "resource": "r"'
        for _ in range(count):
            yield b" " * 100  # white space, which JSON allows between members
        yield b"}"

    # Under the limit, a chunked body is read whole; over it, refused.
    response = client.post("/api/v1/allow", content=chunks(2), headers=KEY)
    assert response.status_code == 200, response.text
    assert response.json()["tenant"] == "t-chunked"
    assert_error(client.post("/api/v1/allow", content=chunks(10), headers=KEY), 413)


def test_huge_headers_are_431(client: httpx.Client) -> None:
    headers = {**KEY, "X-Padding": "a" * 20_000}
    assert_error(client.get("/allow?tenant=t-431&resource=r", headers=headers), 431)


# 429


def test_denial_is_429_with_retry_after(client: httpx.Client) -> None:
    first = client.get("/allow?tenant=t-429&resource=r&cost=5", headers=KEY)
    assert first.status_code == 200
    assert first.json()["remaining"] == 0

    response = client.get("/allow?tenant=t-429&resource=r", headers=KEY)
    assert response.status_code == 429
    body = response.json()
    assert body["allowed"] is False
    assert body["error"] == "rate limit exceeded"
    assert body["retry_after_seconds"] >= 1
    assert int(response.headers["retry-after"]) == body["retry_after_seconds"]


# The JSON endpoints.


def test_post_api_v1_allow_with_json_body(client: httpx.Client) -> None:
    response = client.post(
        "/api/v1/allow", json={"tenant": "t-json", "resource": "search", "cost": 2}, headers=KEY
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["allowed"] is True
    assert (body["tenant"], body["resource"], body["policy"]) == ("t-json", "search", "t-*/*")
    assert body["remaining"] == 3
    assert response.headers["x-ratelimit-remaining"] == "3"

    response = client.post(
        "/api/v1/allow", json={"tenant": "t-json", "resource": "search", "cost": 1.5}, headers=KEY
    )
    assert_error(response, 400, "cost")


def test_get_api_v1_allow_is_the_same_as_allow(client: httpx.Client) -> None:
    response = client.get("/api/v1/allow?tenant=t-v1get&resource=r&cost=3", headers=KEY)
    assert response.status_code == 200
    assert response.json()["remaining"] == 2


def test_batch_decides_each_check_in_order_and_isolates_errors(client: httpx.Client) -> None:
    checks = [
        {"tenant": "t-batch", "resource": "r", "cost": 1},
        {"tenant": "t-batch", "resource": "r", "cost": 0},
        {"tenant": "t-batch", "resource": "r", "cost": 2},
        {"tenant": "nobody", "resource": "x", "cost": 1},
        {"tenant": "t-batch", "resource": "r", "cost": 5},
        {"resource": "r"},
        {"tenant": "t-batch", "resource": "r"},
    ]
    response = client.post("/api/v1/allow/batch", json={"checks": checks}, headers=KEY)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(checks)

    assert results[0]["status"] == 200
    assert results[0]["allowed"] is True
    assert results[0]["remaining"] == 4
    assert results[1]["status"] == 400
    assert results[1]["field"] == "cost"
    assert "allowed" not in results[1]
    assert results[2]["status"] == 200
    assert results[2]["remaining"] == 2
    assert results[3]["status"] == 404
    assert "nobody" in results[3]["error"]
    # A denial inside a batch charges nothing: the last check still finds 2 units.
    assert results[4]["status"] == 429
    assert results[4]["allowed"] is False
    assert results[4]["retry_after_seconds"] >= 1
    assert results[5]["status"] == 400
    assert results[5]["field"] == "tenant"
    assert results[6]["status"] == 200
    assert results[6]["remaining"] == 1


def test_batch_without_key_is_401(client: httpx.Client) -> None:
    checks = [{"tenant": "t-batch-nokey", "resource": "r"}]
    response = client.post("/api/v1/allow/batch", json={"checks": checks})
    if response.status_code == 200:
        # Per-check errors are an acceptable shape too; none may be decided.
        (result,) = response.json()["results"]
        assert result["status"] == 401
    else:
        assert_error(response, 401)


def test_quota_reports_without_charging(client: httpx.Client) -> None:
    first = client.get("/allow?tenant=t-quota&resource=r&cost=2", headers=KEY)
    assert first.json()["remaining"] == 3

    quotas = [client.get("/api/v1/quota/t-quota?resource=r", headers=KEY) for _ in range(3)]
    for quota in quotas:
        assert quota.status_code == 200, quota.text
        body = quota.json()
        assert (body["tenant"], body["resource"], body["policy"]) == ("t-quota", "r", "t-*/*")
        assert body["limit"] == 5
        assert body["remaining"] == 3
        assert quota.headers["x-ratelimit-remaining"] == "3"

    after = client.get("/allow?tenant=t-quota&resource=r", headers=KEY)
    assert after.status_code == 200
    assert after.json()["remaining"] == quotas[-1].json()["remaining"] - 1


def test_quota_of_an_unused_pair_is_full_and_needs_a_key(client: httpx.Client) -> None:
    quota = client.get("/api/v1/quota/t-fresh?resource=r", headers=KEY)
    assert quota.status_code == 200
    assert quota.json()["remaining"] == 5
    assert_error(client.get("/api/v1/quota/t-fresh?resource=r"), 401)
    assert_error(client.get("/api/v1/quota/nobody?resource=r", headers=KEY), 404)


def test_head_reports_the_length_of_the_get_body(client: httpx.Client) -> None:
    get = client.get("/health")
    head = client.head("/health")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(get.content))
