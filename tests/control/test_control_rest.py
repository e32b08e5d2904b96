"""The control plane's REST API, in process over Quart's test client and a MemoryStore."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import pytest
from control_support import ADMIN_KEY, Api, CountingStore
from werkzeug.datastructures import Headers

from helios.control.model import GatewayInfo, dump
from helios.control.plane import ControlPlane
from helios.control.rest import MAX_BODY_BYTES, create_app
from helios.errors import NotFound
from helios.gateway.auth import KeyRing
from helios.store.kv import Put

POLICY = {"algorithm": "token_bucket", "limit": 10, "window": "1m"}
# Envoy descriptors as a resource: slashes and equals signs, sent as they are.
ENVOY_RESOURCE = "key1=value1/key2=value2"

# One request of every route, with what it needs in the store (see _seed).
EVERY_ROUTE = [
    ("GET", "/v1/openapi.json", None),
    ("GET", "/v1/tenants", None),
    ("POST", "/v1/tenants", {"name": "beta"}),
    ("GET", "/v1/tenants/acme", None),
    ("PATCH", "/v1/tenants/acme", {"description": "changed"}),
    ("DELETE", "/v1/tenants/acme", None),
    ("GET", "/v1/tenants/acme/policies", None),
    ("GET", "/v1/tenants/acme/policies/search", None),
    ("PUT", "/v1/tenants/acme/policies/search", POLICY),
    ("DELETE", "/v1/tenants/acme/policies/search", None),
    ("GET", "/v1/tenants/acme/keys", None),
    ("POST", "/v1/tenants/acme/keys", {}),
    ("DELETE", "/v1/tenants/acme/keys/abc123", None),
    ("POST", "/v1/tenants/acme/reset", {}),
    ("GET", "/v1/gateways", None),
    ("GET", "/v1/no/such/route", None),
]


async def _seed(api: Api) -> None:
    assert (await api("POST", "/v1/tenants", {"name": "acme"})).status == 201
    assert (await api("PUT", "/v1/tenants/acme/policies/search", POLICY)).status == 201


# Probes.


async def test_health_needs_no_key(api: Api) -> None:
    answer = await api("GET", "/health", key=None)
    assert answer.status == 200
    assert answer.body["status"] == "ok"
    assert answer.body["role"] == "control"


async def test_ready_reports_the_reasons(plane: ControlPlane, store: CountingStore) -> None:
    reasons: list[str] = ["the store does not answer"]
    app = create_app(plane, KeyRing([ADMIN_KEY]), ready=lambda: reasons)
    api = Api(app.test_client(), store)
    answer = await api("GET", "/ready", key=None)
    assert answer.status == 503
    assert answer.body == {"status": "not ready", "reasons": ["the store does not answer"]}
    reasons.clear()
    assert (await api("GET", "/ready", key=None)).status == 200


# Authentication.


@pytest.mark.parametrize(("method", "path", "body"), EVERY_ROUTE)
@pytest.mark.parametrize("key", [None, "wrong-key", ""])
async def test_401_before_anything_is_looked_at(
    api: Api, store: CountingStore, method: str, path: str, body: Any, key: str | None
) -> None:
    await _seed(api)
    calls, revision = store.calls, store.revision
    answer = await api(method, path, body, key=key)
    assert answer.status == 401
    assert answer.body["field"] == "api_key"
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert (store.calls, store.revision) == (calls, revision)


async def test_a_key_in_the_query_string_is_not_accepted(api: Api) -> None:
    answer = await api("GET", f"/v1/tenants?api_key={ADMIN_KEY}", key=None)
    assert answer.status == 401


async def test_bearer_authorization_is_accepted(api: Api) -> None:
    answer = await api(
        "GET", "/v1/tenants", key=None, headers={"Authorization": "Bearer " + ADMIN_KEY}
    )
    assert answer.status == 200


async def test_bad_input_without_a_key_is_401(api: Api) -> None:
    assert (await api("POST", "/v1/tenants", data=b"{not json", key=None)).status == 401
    big = b"x" * (MAX_BODY_BYTES + 1)
    assert (await api("POST", "/v1/tenants", data=big, key=None)).status == 401


@pytest.mark.parametrize(("method", "path", "body"), EVERY_ROUTE[:-1])
async def test_every_route_answers_with_a_key(api: Api, method: str, path: str, body: Any) -> None:
    await _seed(api)
    if path.endswith("/keys/abc123"):
        path = path.replace("abc123", (await api("POST", "/v1/tenants/acme/keys")).body["id"])
    answer = await api(method, path, body)
    assert 200 <= answer.status < 300, answer.text


# Tenants.


async def test_tenant_lifecycle(api: Api) -> None:
    created = await api("POST", "/v1/tenants", {"name": "acme", "description": "Acme Corp"})
    assert created.status == 201
    assert created.headers["location"] == "/v1/tenants/acme"
    assert created.body == {
        "name": "acme",
        "description": "Acme Corp",
        "created_at": "2027-01-15T08:00:00Z",
        "revision": 1,
    }
    assert created.headers["etag"] == '"1"'

    shown = await api("GET", "/v1/tenants/acme")
    assert shown.body == created.body
    assert shown.headers["etag"] == '"1"'

    changed = await api("PATCH", "/v1/tenants/acme", {"description": "ACME"})
    assert changed.status == 200
    assert changed.body["description"] == "ACME"
    assert changed.headers["etag"] == f'"{changed.body["revision"]}"'

    assert (await api("DELETE", "/v1/tenants/acme")).status == 204
    gone = await api("GET", "/v1/tenants/acme")
    assert gone.status == 404
    assert gone.body["field"] == "tenant"


async def test_tenants_page_in_name_order(api: Api) -> None:
    for name in ("e", "b", "d", "a", "c"):
        assert (await api("POST", "/v1/tenants", {"name": name})).status == 201
    names: list[str] = []
    after = ""
    pages = 0
    while True:
        page = await api("GET", f"/v1/tenants?limit=2&after={after}")
        assert page.status == 200
        names += [tenant["name"] for tenant in page.body["tenants"]]
        pages += 1
        if page.body["next"] is None:
            break
        after = page.body["next"]
    assert names == ["a", "b", "c", "d", "e"]
    assert pages == 3
    assert (await api("GET", "/v1/tenants")).body["next"] is None


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "limit=-1", "limit=1.5"])
async def test_a_bad_page_size_names_limit(api: Api, query: str) -> None:
    answer = await api("GET", f"/v1/tenants?{query}")
    assert answer.status == 400
    assert answer.body["field"] == "limit"


async def test_unknown_and_repeated_query_parameters(api: Api) -> None:
    unknown = await api("GET", "/v1/tenants?page=2")
    assert (unknown.status, unknown.body["field"]) == (400, "page")
    repeated = await api("GET", "/v1/tenants?limit=1&limit=2")
    assert (repeated.status, repeated.body["field"]) == (400, "limit")


async def test_creating_a_tenant_twice_is_409(api: Api, store: CountingStore) -> None:
    await api("POST", "/v1/tenants", {"name": "acme"})
    revision = store.revision
    again = await api("POST", "/v1/tenants", {"name": "acme"})
    assert again.status == 409
    assert store.revision == revision


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b"{not json", "body", "the request body is not valid JSON"),
        (b"[1, 2]", "body", "the request body must be a JSON object"),
        (b"", "body", "the request body is not valid JSON"),
        (b'"acme"', "body", "the request body must be a JSON object"),
        (b"\xff\xfe", "body", "the request body is not valid JSON"),
        (b"{}", "name", "name is required"),
        (b'{"name": "acme", "colour": "red", "age": 3}', "age", "age, colour"),
        (b'{"name": 7}', "name", "name must be a string, got 7"),
        (b'{"name": true}', "name", "name must be a string, got true"),
        (b'{"name": null}', "name", "name is required"),
        (b'{"name": ""}', "name", "name is required"),
        (b'{"name": "a*b"}', "name", "name may hold '*' only at its end, got \"a*b\""),
        (b'{"name": "a/b"}', "name", "name must not contain '/', got \"a/b\""),
        (b'{"name": "a\\u0000b"}', "name", 'got "a\\u0000b"'),
        (b'{"name": ".."}', "name", 'name must not be ".."'),
        (b'{"description": "x"}', "name", "name is required"),
        (b'{"name": "acme", "description": 5}', "description", "description"),
        (
            b'{"name": "acme", "description": ["x"]}',
            "description",
            'description must be a string, got ["x"]',
        ),
    ],
)
async def test_bad_tenant_bodies_name_their_field_and_write_nothing(
    api: Api, store: CountingStore, body: bytes, field: str, words: str
) -> None:
    answer = await api("POST", "/v1/tenants", data=body)
    assert answer.status == 400
    assert answer.body["field"] == field
    assert words in answer.body["error"]
    assert store.revision == 0


async def test_a_body_too_large_is_413(api: Api, store: CountingStore) -> None:
    big = json.dumps({"name": "acme", "description": "x" * MAX_BODY_BYTES}).encode()
    answer = await api("POST", "/v1/tenants", data=big)
    assert answer.status == 413
    assert answer.body["field"] == "body"
    assert store.revision == 0


# Revisions: ETag, If-Match and 409.


async def test_if_match_makes_tenant_writes_conditional(api: Api, store: CountingStore) -> None:
    created = await api("POST", "/v1/tenants", {"name": "acme"})
    etag = created.headers["etag"]
    first = await api(
        "PATCH", "/v1/tenants/acme", {"description": "one"}, headers={"If-Match": etag}
    )
    assert first.status == 200
    revision = store.revision
    stale = await api(
        "PATCH", "/v1/tenants/acme", {"description": "two"}, headers={"If-Match": etag}
    )
    assert stale.status == 409
    assert stale.body["field"] == "revision"
    assert store.revision == revision
    delete_stale = await api("DELETE", "/v1/tenants/acme", headers={"If-Match": etag})
    assert delete_stale.status == 409
    assert (await api("GET", "/v1/tenants/acme")).body["description"] == "one"
    fresh = {"If-Match": first.headers["etag"]}
    assert (await api("DELETE", "/v1/tenants/acme", headers=fresh)).status == 204


async def test_a_put_with_an_if_match_that_is_no_longer_current_gets_409(
    api: Api, store: CountingStore
) -> None:
    """One admin writes after the other has: refused before the transaction.

    Admins writing at the same moment, which only the store's compare-and-swap
    can tell apart, are in test_control_races.py.
    """
    await _seed(api)
    path = "/v1/tenants/acme/policies/search"
    # Both read revision N.
    alice = (await api("GET", path)).headers["etag"]
    bob = (await api("GET", path)).headers["etag"]
    assert alice == bob

    won = await api("PUT", path, {**POLICY, "limit": 20}, headers={"If-Match": alice})
    assert won.status == 200
    revision = store.revision
    lost = await api("PUT", path, {**POLICY, "limit": 30}, headers={"If-Match": bob})
    assert lost.status == 409
    assert lost.body["field"] == "revision"
    assert f"(now at revision {won.body['revision']}); read it again" in lost.body["error"]
    assert store.revision == revision
    assert (await api("GET", path)).body["bands"][0]["limit"] == 20

    stale_delete = await api("DELETE", path, headers={"If-Match": bob})
    assert stale_delete.status == 409
    assert (await api("DELETE", path, headers={"If-Match": won.headers["etag"]})).status == 204


async def test_if_match_zero_creates_a_policy_only_if_it_does_not_exist(api: Api) -> None:
    await api("POST", "/v1/tenants", {"name": "acme"})
    path = "/v1/tenants/acme/policies/search"
    assert (await api("PUT", path, POLICY, headers={"If-Match": '"0"'})).status == 201
    assert (await api("PUT", path, POLICY, headers={"If-Match": '"0"'})).status == 409


@pytest.mark.parametrize("value", ["3", '"abc"', 'W/"3"', '"3", "4"', '"-1"', "*", '""'])
async def test_a_malformed_if_match_names_the_header(
    api: Api, store: CountingStore, value: str
) -> None:
    await _seed(api)
    revision = store.revision
    for method, path, body in [
        ("PATCH", "/v1/tenants/acme", {"description": "x"}),
        ("DELETE", "/v1/tenants/acme", None),
        ("PUT", "/v1/tenants/acme/policies/search", POLICY),
        ("DELETE", "/v1/tenants/acme/policies/search", None),
    ]:
        answer = await api(method, path, body, headers={"If-Match": value})
        assert answer.status == 400, (method, path)
        assert answer.body["field"] == "If-Match"
    assert store.revision == revision


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        # Full-width and Arabic-Indic digits are digits to str.isdigit(), not revisions.
        ('"\uff10"', "'\"\uff10\"'"),
        ('"\u0661"', "'\"\u0661\"'"),
        ('"2"\u00a0', "'\"2\"\\xa0'"),
    ],
)
async def test_if_match_is_shown_as_sent_and_only_ascii_digits_are_a_revision(
    api: Api, store: CountingStore, value: str, shown: str
) -> None:
    await _seed(api)
    revision = store.revision
    answer = await api(
        "PATCH", "/v1/tenants/acme", {"description": "x"}, headers={"If-Match": value}
    )
    assert (answer.status, answer.body["field"]) == (400, "If-Match")
    assert answer.body["error"] == (
        f'If-Match must be one revision in double quotes, like "42", got {shown}'
    )
    assert store.revision == revision


async def test_if_match_given_twice_is_400(api: Api, store: CountingStore) -> None:
    await _seed(api)
    revision = store.revision
    headers = Headers([("X-API-Key", ADMIN_KEY), ("If-Match", '"1"'), ("If-Match", '"2"')])
    response = await api.client.open("/v1/tenants/acme", method="DELETE", headers=headers)
    assert response.status_code == 400
    assert await response.get_json() == {
        "error": "If-Match is given more than once",
        "field": "If-Match",
    }
    assert store.revision == revision


# Bodies: the same faults in the same words on every route.

# Every route with a body, and a valid body for it.
BODY_ROUTES = [
    ("POST", "/v1/tenants", {"name": "beta"}),
    ("PATCH", "/v1/tenants/acme", {"description": "changed"}),
    ("PUT", "/v1/tenants/acme/policies/search", POLICY),
    ("POST", "/v1/tenants/acme/keys", {"description": "billing"}),
    ("POST", "/v1/tenants/acme/reset", {"resource": "search"}),
]


@pytest.mark.parametrize(("method", "path", "_valid"), BODY_ROUTES)
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "the request body is not valid JSON"),
        (b"{oops", "the request body is not valid JSON"),
        (b"\xff\xfe", "the request body is not valid JSON"),
        (b"[]", "the request body must be a JSON object"),
        (b"[1, 2]", "the request body must be a JSON object"),
        (b"42", "the request body must be a JSON object"),
        (b"null", "the request body must be a JSON object"),
        (b"[" * 100_000, "the request body nests too deeply"),
    ],
)
async def test_a_body_that_is_not_a_json_object_is_worded_alike_on_every_route(
    api: Api, store: CountingStore, method: str, path: str, _valid: Any, body: bytes, message: str
) -> None:
    await _seed(api)
    revision = store.revision
    answer = await api(method, path, data=body)
    assert (answer.status, answer.body) == (400, {"error": message, "field": "body"})
    assert store.revision == revision


@pytest.mark.parametrize(("method", "path", "valid"), BODY_ROUTES)
async def test_a_field_given_twice_is_refused_on_every_route(
    api: Api, store: CountingStore, method: str, path: str, valid: dict[str, Any]
) -> None:
    await _seed(api)
    revision = store.revision
    name, value = next(iter(valid.items()))
    # {"name": value, <the rest>, "name": value}: even the same value twice.
    text = json.dumps(valid)[:-1] + f", {json.dumps(name)}: {json.dumps(value)}}}"
    answer = await api(method, path, data=text.encode())
    assert (answer.status, answer.body) == (
        400,
        {"error": f"field '{name}' is given more than once", "field": name},
    )
    # Spelled differently, the same name: JSON's escapes are decoded first.
    escaped = "".join(f"\\u{ord(char):04x}" for char in name)
    text = json.dumps(valid)[:-1] + f', "{escaped}": {json.dumps(value)}}}'
    assert (await api(method, path, data=text.encode())).body["field"] == name
    assert store.revision == revision


async def test_a_policy_field_given_twice_is_refused_not_the_last_one_kept(
    api: Api, store: CountingStore
) -> None:
    await _seed(api)
    path = "/v1/tenants/acme/policies/search"
    revision = store.revision
    top = await api("PUT", path, data=b'{"limit": 1, "limit": 2, "window": "1s"}')
    assert (top.status, top.body) == (
        400,
        {"error": "field 'limit' is given more than once", "field": "limit"},
    )
    band = await api("PUT", path, data=b'{"bands": [{"limit": 1, "window": "1s", "window": "1m"}]}')
    assert (band.status, band.body["field"]) == (400, "window")
    assert store.revision == revision
    assert (await api("GET", path)).body["bands"][0]["limit"] == POLICY["limit"]


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (
            {"algorithm": None},
            "algorithm",
            "policy.algorithm must be one of token_bucket, fixed_window, sliding_window, got null",
        ),
        (
            {"algorithm": "leaky_bucket"},
            "algorithm",
            "policy.algorithm must be one of token_bucket, fixed_window, sliding_window,"
            ' got "leaky_bucket"',
        ),
        ({"shadow": "yes"}, "shadow", 'policy.shadow must be true or false, got "yes"'),
        ({"shadow": None}, "shadow", "policy.shadow must be true or false, got null"),
        (
            {"failure_mode": True},
            "failure_mode",
            "policy.failure_mode must be one of open, closed, local, got true",
        ),
        ({"calendar": 1}, "calendar", "policy.calendar must be true or false, got 1"),
        ({"description": 5}, "description", "policy.description must be a string, got 5"),
        (
            {"tenant": "other"},
            "tenant",
            'policy.tenant is "other" but the path says "acme"; leave tenant out of the body',
        ),
        (
            {"resource": False},
            "resource",
            'policy.resource is false but the path says "search"; leave resource out of the body',
        ),
        ({"limit": None}, "limit", "policy.limit is required"),
        (
            {"limit": True},
            "limit",
            "policy.limit must be an integer from 1 to 1000000000000, got true",
        ),
        ({"window": None}, "window", "policy.window must be a number of seconds or a duration"),
        ({"window": "ünö"}, "window", 'got "ünö"'),
        ({"window": "x" * 1000}, "window", 'got "' + "x" * 98 + "…"),
    ],
)
async def test_values_at_fault_are_shown_as_json(
    api: Api, change: dict[str, Any], field: str, message: str
) -> None:
    await _seed(api)
    answer = await api("PUT", "/v1/tenants/acme/policies/search", {**POLICY, **change})
    assert (answer.status, answer.body["field"]) == (400, field)
    assert message in answer.body["error"]
    assert "None" not in answer.body["error"] and "True" not in answer.body["error"]


# Windows: whole milliseconds, from 1 ms to 10 years.


@pytest.mark.parametrize(
    ("window", "shown"),
    [
        (0.001, "1ms"),
        ("1ms", "1ms"),
        ("0.001", "1ms"),
        (1.5, "1500ms"),
        ("1.5s", "1500ms"),
        (315_360_000, "3650d"),
        ("3650d", "3650d"),
        ("315359999.999", "315359999999ms"),
    ],
)
async def test_windows_at_the_bounds_are_stored_exactly(
    api: Api, window: object, shown: str
) -> None:
    await _seed(api)
    answer = await api("PUT", "/v1/tenants/acme/policies/search", {**POLICY, "window": window})
    assert answer.status == 200, answer.text
    assert answer.body["bands"][0]["window"] == shown


@pytest.mark.parametrize(
    ("window", "message"),
    [
        (0.0015, "policy.window must be a whole number of milliseconds, got 0.0015"),
        ("1.5ms", 'policy.window must be a whole number of milliseconds, got "1.5ms"'),
        ("0.0001s", "policy.window must be from 1ms to 10 years (315360000 seconds)"),
        (0.0009, "policy.window must be from 1ms to 10 years (315360000 seconds), got 0.0009"),
        (0, "policy.window must be from 1ms to 10 years (315360000 seconds), got 0"),
        (
            315_360_000.5,
            "policy.window must be from 1ms to 10 years (315360000 seconds), got 315360000.5",
        ),
        (315_360_001, "policy.window must be from 1ms to 10 years"),
        ("3650.5d", "policy.window must be from 1ms to 10 years"),
        ("522w", "policy.window must be from 1ms to 10 years"),
        (10**30, "policy.window must be from 1ms to 10 years"),
    ],
)
async def test_a_window_out_of_bounds_or_between_milliseconds_is_400(
    api: Api, store: CountingStore, window: object, message: str
) -> None:
    await _seed(api)
    revision = store.revision
    answer = await api("PUT", "/v1/tenants/acme/policies/search", {**POLICY, "window": window})
    assert (answer.status, answer.body["field"]) == (400, "window")
    assert answer.body["error"].startswith(message)
    assert store.revision == revision


# Descriptions: at most 1000 characters, wherever they are written.


async def test_descriptions_are_bounded_everywhere(api: Api, store: CountingStore) -> None:
    await _seed(api)
    longest = "é" * 1000
    too_long = "x" * 100_000
    cases = [
        ("POST", "/v1/tenants", {"name": "beta"}, "description"),
        ("PATCH", "/v1/tenants/acme", {}, "description"),
        ("POST", "/v1/tenants/acme/keys", {}, "description"),
        ("PUT", "/v1/tenants/acme/policies/search", POLICY, "policy.description"),
    ]
    for method, path, body, where in cases:
        revision = store.revision
        refused = await api(method, path, {**body, "description": too_long})
        assert (refused.status, refused.body) == (
            400,
            {
                "error": f"{where} must be at most 1000 characters, got 100000",
                "field": "description",
            },
        ), path
        assert store.revision == revision
        accepted = await api(method, path, {**body, "description": longest})
        assert accepted.status in (200, 201), accepted.text
        assert accepted.body["description"] == longest


# Policies.


async def test_policy_lifecycle_with_an_envoy_resource(api: Api) -> None:
    await api("POST", "/v1/tenants", {"name": "acme"})
    path = f"/v1/tenants/acme/policies/{ENVOY_RESOURCE}"
    created = await api("PUT", path, POLICY)
    assert created.status == 201
    assert created.headers["location"] == path
    assert created.body == {
        "tenant": "acme",
        "resource": ENVOY_RESOURCE,
        "algorithm": "token_bucket",
        "bands": [{"limit": 10, "window": "1m", "burst": 10}],
        "shadow": False,
        "failure_mode": "local",
        "revision": 2,
    }
    assert created.headers["etag"] == '"2"'

    replaced = await api(
        "PUT",
        path,
        {
            "algorithm": "fixed_window",
            "bands": [
                {"limit": 3, "window": "1s"},
                {"limit": 100, "window": "day", "calendar": True},
            ],
        },
    )
    assert replaced.status == 200
    assert "location" not in replaced.headers
    assert replaced.body["bands"][1] == {"limit": 100, "window": "day", "calendar": True}

    shown = await api("GET", path)
    assert shown.body == replaced.body
    assert shown.headers["etag"] == f'"{replaced.body["revision"]}"'

    await api("PUT", "/v1/tenants/acme/policies/user:*", POLICY)
    listed = await api("GET", "/v1/tenants/acme/policies")
    assert sorted(policy["resource"] for policy in listed.body["policies"]) == [
        ENVOY_RESOURCE,
        "user:*",
    ]

    assert (await api("DELETE", path)).status == 204
    gone = await api("GET", path)
    assert gone.status == 404
    assert gone.body["field"] == "resource"


async def test_a_policy_for_a_missing_tenant_is_404(api: Api, store: CountingStore) -> None:
    answer = await api("PUT", "/v1/tenants/ghost/policies/search", POLICY)
    assert answer.status == 404
    assert answer.body["field"] == "tenant"
    assert store.revision == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"algorithm": "leaky_bucket"}, "algorithm"),
        ({"window": "fortnight"}, "window"),
        ({"window": "-1s"}, "window"),
        ({"limit": 0}, "limit"),
        ({"limit": "10"}, "limit"),
        ({"burst": 0}, "burst"),
        ({"window": "day", "calendar": True}, "calendar"),
        ({"tenant": "other"}, "tenant"),
        ({"resource": "elsewhere"}, "resource"),
        ({"colour": "red"}, "colour"),
        ({"revision": 3}, "revision"),
        ({"shadow": "yes"}, "shadow"),
        ({"failure_mode": "sometimes"}, "failure_mode"),
        ({"bands": [{"limit": 1, "window": "1s", "extra": 1}]}, "extra"),
    ],
)
async def test_invalid_policies_name_their_field_and_change_nothing(
    api: Api, store: CountingStore, change: dict[str, Any], field: str
) -> None:
    await _seed(api)
    path = "/v1/tenants/acme/policies/search"
    before = (await api("GET", path)).body
    revision = store.revision
    document = {**POLICY, **change}
    if "bands" in change:
        del document["limit"], document["window"]
    answer = await api("PUT", path, document)
    assert answer.status == 400, answer.text
    assert answer.body["field"] == field
    assert store.revision == revision
    assert (await api("GET", path)).body == before


async def test_a_policy_needs_a_body(api: Api, store: CountingStore) -> None:
    await _seed(api)
    revision = store.revision
    answer = await api("PUT", "/v1/tenants/acme/policies/search", data=b"")
    assert answer.body == {"error": "the request body is not valid JSON", "field": "body"}
    assert store.revision == revision


# API keys.


async def test_key_lifecycle_shows_the_key_once_and_stores_only_its_hash(
    api: Api, store: CountingStore
) -> None:
    await api("POST", "/v1/tenants", {"name": "acme"})
    issued = await api("POST", "/v1/tenants/acme/keys", {"description": "billing"})
    assert issued.status == 201
    assert issued.headers["cache-control"] == "no-store"
    key = issued.body["key"]
    assert key.startswith("hk_")
    assert set(issued.body) == {"id", "tenant", "prefix", "created_at", "description", "key"}
    assert issued.body["prefix"] == key[: len(issued.body["prefix"])]

    listed = await api("GET", "/v1/tenants/acme/keys")
    assert listed.status == 200
    [record] = listed.body["keys"]
    assert record["id"] == issued.body["id"]
    assert "key" not in record
    assert "sha256" not in record
    assert key not in listed.text

    values = [entry.value for entry in (await store.range(""))[0]]
    assert not any(key.encode() in value for value in values)
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert any(digest.encode() in value for value in values)

    revoked = await api("DELETE", f"/v1/tenants/acme/keys/{issued.body['id']}")
    assert revoked.status == 204
    assert (await api("GET", "/v1/tenants/acme/keys")).body["keys"] == []
    again = await api("DELETE", f"/v1/tenants/acme/keys/{issued.body['id']}")
    assert (again.status, again.body["field"]) == (404, "id")


async def test_a_key_needs_no_body(api: Api) -> None:
    await api("POST", "/v1/tenants", {"name": "acme"})
    issued = await api("POST", "/v1/tenants/acme/keys")
    assert issued.status == 201
    assert issued.body["description"] == ""


async def test_bad_key_requests_write_nothing(api: Api, store: CountingStore) -> None:
    await api("POST", "/v1/tenants", {"name": "acme"})
    await api("POST", "/v1/tenants", {"name": "team*"})
    issued = await api("POST", "/v1/tenants/acme/keys")
    revision = store.revision
    for method, path, body, status, field in [
        ("POST", "/v1/tenants/acme/keys", {"owner": "x"}, 400, "owner"),
        ("POST", "/v1/tenants/acme/keys", {"description": ["x"]}, 400, "description"),
        ("POST", "/v1/tenants/team*/keys", {}, 400, "tenant"),
        ("POST", "/v1/tenants/ghost/keys", {}, 404, "tenant"),
        ("DELETE", "/v1/tenants/acme/keys/no-such-id", None, 400, "id"),
    ]:
        answer = await api(method, path, body)
        assert (answer.status, answer.body["field"]) == (status, field), path
    with_if_match = await api(
        "DELETE", f"/v1/tenants/acme/keys/{issued.body['id']}", headers={"If-Match": '"1"'}
    )
    assert (with_if_match.status, with_if_match.body["field"]) == (400, "If-Match")
    assert store.revision == revision


# Gateways and resets.


async def test_gateways_lists_the_registered_gateways(
    api: Api, plane: ControlPlane, store: CountingStore
) -> None:
    assert (await api("GET", "/v1/gateways")).body == {"gateways": []}
    gateway = GatewayInfo("gw-1", "10.0.0.5:8080", "fast", "0.1.0", 7, 1_800_000_000.0)
    lease = await store.grant_lease(10)
    put = Put(plane.layout.gateway("gw-1"), dump(gateway.document()), lease=lease)
    await store.commit([], [put])
    assert (await api("GET", "/v1/gateways")).body == {"gateways": [gateway.to_dict()]}


async def test_reset_is_accepted(api: Api, plane: ControlPlane, store: CountingStore) -> None:
    await api("POST", "/v1/tenants", {"name": "acme"})
    everything = await api("POST", "/v1/tenants/acme/reset")
    assert everything.status == 202
    assert everything.body["tenant"] == "acme"
    assert everything.body["resource"] is None
    one = await api("POST", "/v1/tenants/acme/reset", {"resource": ENVOY_RESOURCE})
    assert one.status == 202
    assert one.body["resource"] == ENVOY_RESOURCE
    entries, _ = await store.range(plane.layout.resets())
    assert len(entries) == 2

    revision = store.revision
    unknown = await api("POST", "/v1/tenants/acme/reset", {"resources": ["a"]})
    assert (unknown.status, unknown.body["field"]) == (400, "resources")
    bad = await api("POST", "/v1/tenants/acme/reset", {"resource": 5})
    assert (bad.status, bad.body) == (
        400,
        {"error": "resource must be a string, got 5", "field": "resource"},
    )
    assert store.revision == revision


async def test_an_empty_resource_resets_nothing(
    api: Api, plane: ControlPlane, store: CountingStore
) -> None:
    """Only leaving resource out, or null, resets every resource; "" is no resource."""
    await api("POST", "/v1/tenants", {"name": "globex"})
    revision = store.revision
    empty = await api("POST", "/v1/tenants/globex/reset", {"resource": ""})
    assert (empty.status, empty.body) == (
        400,
        {
            "error": "resource must not be empty; leave it out (or null) to reset every resource",
            "field": "resource",
        },
    )
    assert store.revision == revision
    assert (await store.range(plane.layout.resets()))[0] == []

    for body in ({"resource": None}, {}, None):
        every = await api("POST", "/v1/tenants/globex/reset", body)
        assert (every.status, every.body["resource"]) == (202, None)


async def test_a_reset_is_for_one_tenant_and_one_resource_not_for_patterns(
    api: Api, plane: ControlPlane, store: CountingStore
) -> None:
    await api("POST", "/v1/tenants", {"name": "team-*"})
    await api("POST", "/v1/tenants", {"name": "acme"})
    revision = store.revision

    pattern = await api("POST", "/v1/tenants/team-*/reset")
    assert (pattern.status, pattern.body["field"]) == (400, "tenant")
    assert "not for the pattern 'team-*'" in pattern.body["error"]
    everyone = await api("POST", "/v1/tenants/*/reset", {"resource": "search"})
    assert (everyone.status, everyone.body["field"]) == (400, "tenant")
    for resource in ("*", "user:*"):
        answer = await api("POST", "/v1/tenants/acme/reset", {"resource": resource})
        assert (answer.status, answer.body["field"]) == (400, "resource")
        assert "leave resource out to reset every resource" in answer.body["error"]
    assert store.revision == revision

    # A tenant named only in decisions, whose policies come from a pattern.
    covered = await api("POST", "/v1/tenants/team-a/reset", {"resource": "x"})
    assert covered.status == 202, covered.text
    assert (covered.body["tenant"], covered.body["resource"]) == ("team-a", "x")
    entries, _ = await store.range(plane.layout.resets())
    assert [json.loads(entry.value)["tenant"] for entry in entries] == ["team-a"]

    # Nothing covers it: most likely a typing mistake.
    unknown = await api("POST", "/v1/tenants/globex/reset")
    assert (unknown.status, unknown.body["field"]) == (404, "tenant")
    assert "no tenant pattern matches it" in unknown.body["error"]


async def test_a_reset_needs_the_tenants_record_or_a_patterns_that_matches_it(
    plane: ControlPlane,
) -> None:
    await plane.create_tenant("t*")
    assert (await plane.reset("team-a")).tenant == "team-a"
    await plane.delete_tenant("t*")
    with pytest.raises(NotFound):
        await plane.reset("team-a")
    await plane.create_tenant("team-a")
    assert (await plane.reset("team-a")).tenant == "team-a"


# Routing.


async def test_wrong_methods_are_405_with_allow(api: Api) -> None:
    answer = await api("POST", "/v1/gateways")
    assert answer.status == 405
    assert answer.headers["allow"] == "GET, HEAD"
    tenant = await api("PUT", "/v1/tenants/acme")
    assert tenant.status == 405
    assert tenant.headers["allow"] == "DELETE, GET, HEAD, PATCH"


async def test_unknown_routes_are_404_json(api: Api) -> None:
    answer = await api("GET", "/v1/nothing/here")
    assert answer.status == 404
    assert answer.headers["content-type"] == "application/json"
    assert "no route" in answer.body["error"]


# The access log.


async def test_the_access_log_never_holds_a_key(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await _seed(api)
    issued = await api("POST", "/v1/tenants/acme/keys", {"description": "d"})
    key = issued.body["key"]
    for method, path, body in EVERY_ROUTE:
        await api(method, path, body)
        await api(method, path, body, key=None)
        await api(method, path, body, key="wrong-" + key)
        await api(method, path, body, key=None, headers={"Authorization": f"Bearer {key}"})
    await api("GET", f"/v1/tenants?api_key={ADMIN_KEY}", key=None)
    await api("POST", "/v1/tenants/acme/keys", {"description": key})
    await api("POST", "/v1/tenants", data=b"x" * (MAX_BODY_BYTES + 1))

    access = [r for r in caplog.records if r.name == "helios.control.access"]
    assert len(access) >= 4 * len(EVERY_ROUTE)
    assert any("POST /v1/tenants/acme/keys 201" in r.getMessage() for r in access)
    assert any("GET /v1/tenants 401" in r.getMessage() for r in access)
    for record in caplog.records:
        text = record.getMessage() + repr(record.args)
        assert ADMIN_KEY not in text
        assert key not in text
        assert key[12:] not in text
    assert ADMIN_KEY not in caplog.text
    assert key not in caplog.text


async def test_the_access_log_shows_no_query_and_escapes_the_path(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="helios.control.access")
    await api("GET", "/v1/tenants?after=secret-looking")
    await api("GET", "/v1/tenants/a%0Ab")
    messages = [r.getMessage() for r in caplog.records if r.name == "helios.control.access"]
    assert messages[0].split()[1:4] == ["GET", "/v1/tenants", "200"]
    assert messages[0].endswith("ms")
    assert "secret-looking" not in "".join(messages)
    assert "\n" not in messages[1]
    assert "/v1/tenants/a%0Ab" in messages[1]


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/tenants/..", "tenant"),
        ("/v1/tenants/acme/policies/a%2F..%2Fb", "resource"),
    ],
)
async def test_dot_segments_are_400(api: Api, store: CountingStore, path: str, field: str) -> None:
    await _seed(api)
    revision = store.revision
    answer = await api("PUT" if "policies" in path else "POST", path, POLICY)
    if "policies" not in path:
        answer = await api("GET", path, None)
    assert answer.status == 400, answer.body
    assert answer.body["field"] == field
    assert store.revision == revision


async def test_patch_without_a_description_changes_nothing(api: Api, store: CountingStore) -> None:
    await api("POST", "/v1/tenants", {"name": "keep", "description": "Keep me"})
    for body in ({}, {"description": None}):
        answer = await api("PATCH", "/v1/tenants/keep", body)
        assert answer.status == 400, answer.body
        assert answer.body["field"] == "description"
    assert (await api("GET", "/v1/tenants/keep", None)).body["description"] == "Keep me"
