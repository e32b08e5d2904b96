"""The OpenAPI document: it describes exactly the routes the app serves, and holds together."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from control_support import Api

from helios.control.openapi import openapi_document
from helios.control.plane import ControlPlane
from helios.control.rest import create_app
from helios.gateway.auth import KeyRing

_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def _served(plane: ControlPlane) -> set[tuple[str, str]]:
    """(path template, method) of every route the app serves, in OpenAPI's spelling."""
    app = create_app(plane, KeyRing(["k"]))
    served = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            # HEAD comes with every GET; it is not an operation of its own.
            if method != "HEAD":
                served.add((path, method.lower()))
    return served


def _documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in _METHODS
    }


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def test_every_served_route_is_documented_and_every_documented_one_served(
    plane: ControlPlane,
) -> None:
    assert _served(plane) == _documented(openapi_document())


def test_the_document_has_the_required_top_level_fields() -> None:
    document = openapi_document()
    assert document["openapi"].startswith("3.1.")
    assert document["info"]["title"]
    assert document["info"]["version"]
    assert document["paths"]
    schemes = document["components"]["securitySchemes"]
    assert schemes["adminKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    for requirement in document["security"]:
        assert set(requirement) <= set(schemes)
    for name in ("Tenant", "Policy", "Band", "ApiKey", "Gateway", "Reset", "Error"):
        assert document["components"]["schemas"][name]["type"] == "object" or (
            "allOf" in document["components"]["schemas"][name]
        )


def test_every_ref_resolves() -> None:
    document = openapi_document()
    refs = set(_refs(document))
    assert refs
    for ref in refs:
        _resolve(document, ref)


def test_every_operation_is_complete() -> None:
    document = openapi_document()
    operation_ids = []
    for path, item in document["paths"].items():
        names_in_path = set(re.findall(r"{([a-z_]+)}", path))
        shared = [_resolve(document, p["$ref"]) for p in item.get("parameters", [])]
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            operation_ids.append(operation["operationId"])
            assert operation["summary"]
            responses = operation["responses"]
            assert responses
            assert all(re.fullmatch(r"[1-5][0-9][0-9]", status) for status in responses)
            parameters = shared + [
                _resolve(document, p["$ref"]) if "$ref" in p else p
                for p in operation.get("parameters", [])
            ]
            in_path = {p["name"] for p in parameters if p["in"] == "path"}
            assert in_path == names_in_path, (path, method)
            if path.startswith("/v1/"):
                assert "401" in responses, (path, method)
                assert "security" not in operation
            else:
                assert operation["security"] == []
            conditional = method in ("put", "patch", "delete") and "{" in path
            if conditional and not path.endswith("{key_id}"):
                assert "IfMatch" in str(operation["parameters"]), (path, method)
    assert len(operation_ids) == len(set(operation_ids))


def test_the_error_responses_are_described() -> None:
    document = openapi_document()
    described = set()
    for item in document["paths"].values():
        for method, operation in item.items():
            if method in _METHODS:
                described |= set(operation["responses"])
    assert {"400", "401", "404", "409", "413"} <= described


async def test_the_document_is_served(api: Api) -> None:
    answer = await api("GET", "/v1/openapi.json")
    assert answer.status == 200
    assert answer.body == openapi_document()


def test_a_reset_is_described_as_taking_no_patterns() -> None:
    document = openapi_document()
    item = document["paths"]["/v1/tenants/{tenant}/reset"]
    (tenant,) = [_resolve(document, p["$ref"]) for p in item["parameters"]]
    resource = document["components"]["schemas"]["ResetRequest"]["properties"]["resource"]
    for schema in (tenant["schema"], resource):
        assert re.search(schema["pattern"], "team-a")
        assert not re.search(schema["pattern"], "team-*")
    assert "pattern" in item["post"]["description"]
    assert "400" in item["post"]["responses"]


def test_an_empty_resource_is_described_as_refused_and_null_as_every_resource() -> None:
    document = openapi_document()
    resource = document["components"]["schemas"]["ResetRequest"]["properties"]["resource"]
    assert resource["type"] == ["string", "null"]
    assert resource["minLength"] == 1
    assert not re.search(resource["pattern"], "")


def test_windows_and_descriptions_are_described_with_the_bounds_enforced() -> None:
    schemas = openapi_document()["components"]["schemas"]
    number, text = schemas["Band"]["properties"]["window"]["oneOf"]
    assert (number["minimum"], number["maximum"]) == (0.001, 315_360_000)
    assert "whole number of milliseconds" in schemas["Band"]["properties"]["window"]["description"]
    assert text["type"] == "string"
    for name in ("Tenant", "NewTenant", "TenantUpdate", "ApiKey", "NewApiKey", "PolicyInput"):
        assert schemas[name]["properties"]["description"]["maxLength"] == 1000, name


def test_if_match_is_described_as_ascii_digits() -> None:
    parameter = openapi_document()["components"]["parameters"]["IfMatch"]
    pattern = parameter["schema"]["pattern"]
    assert re.search(pattern, '"42"')
    for value in ('"\uff10"', '""', '"1"x', '"' + "9" * 20 + '"'):
        assert not re.search(pattern, value), value
