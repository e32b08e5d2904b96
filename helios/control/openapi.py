"""The OpenAPI 3.1 description of the control plane's REST API.

Served at ``GET /v1/openapi.json``. It is kept by hand, next to the routes in
:mod:`helios.control.rest`; a test checks that both list the same operations.
"""

from __future__ import annotations

import copy
from typing import Any

from helios import __version__
from helios.control.plane import DEFAULT_PAGE_SIZE, MAX_DESCRIPTION_LENGTH, MAX_PAGE_SIZE
from helios.core.names import MAX_NAME_LENGTH
from helios.core.policy import ALGORITHMS, FAILURE_MODES, MAX_LIMIT
from helios.core.windows import MAX_WINDOW_MS, MIN_WINDOW_MS

Document = dict[str, Any]


def _ref(kind: str, name: str) -> Document:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> Document:
    return _ref("schemas", name)


def _json(schema: Document) -> Document:
    return {"application/json": {"schema": schema}}


def _ok(description: str, schema: str, *, etag: bool = False) -> Document:
    response: Document = {"description": description, "content": _json(_schema(schema))}
    if etag:
        response["headers"] = {"ETag": _ref("headers", "ETag")}
    return response


def _errors(*statuses: int) -> Document:
    names = {
        400: "BadRequest",
        401: "Unauthorized",
        404: "NotFound",
        409: "Conflict",
        413: "PayloadTooLarge",
        503: "Unavailable",
    }
    return {str(status): _ref("responses", names[status]) for status in (401, *statuses)}


def _operation(
    operation_id: str,
    summary: str,
    responses: Document,
    *,
    tag: str,
    parameters: list[Document] | None = None,
    body: str | None = None,
    body_required: bool = True,
    description: str | None = None,
) -> Document:
    operation: Document = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "responses": responses,
    }
    if description is not None:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": body_required, "content": _json(_schema(body))}
    return operation


_TENANT = _ref("parameters", "tenant")
_RESOURCE = _ref("parameters", "resource")
_IF_MATCH = _ref("parameters", "IfMatch")
_NO_CONTENT = {"204": {"description": "Done."}}

_PATHS: Document = {
    "/health": {
        "get": {
            **_operation(
                "health",
                "Liveness: the process answers.",
                {"200": _ok("Alive.", "Health")},
                tag="probes",
            ),
            "security": [],
        }
    },
    "/ready": {
        "get": {
            **_operation(
                "ready",
                "Readiness: the control plane can serve requests.",
                {
                    "200": _ok("Ready.", "Readiness"),
                    "503": _ok("Not ready; the reasons say why.", "Readiness"),
                },
                tag="probes",
            ),
            "security": [],
        }
    },
    "/v1/openapi.json": {
        "get": _operation(
            "openapi",
            "This document.",
            {
                "200": {
                    "description": "The OpenAPI document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **_errors(),
            },
            tag="meta",
        )
    },
    "/v1/tenants": {
        "get": _operation(
            "listTenants",
            "One page of tenants, in name order.",
            {"200": _ok("A page of tenants.", "TenantList"), **_errors(400, 503)},
            tag="tenants",
            parameters=[_ref("parameters", "limit"), _ref("parameters", "after")],
        ),
        "post": _operation(
            "createTenant",
            "Create a tenant.",
            {
                "201": {
                    **_ok("Created.", "Tenant", etag=True),
                    "headers": {
                        "ETag": _ref("headers", "ETag"),
                        "Location": _ref("headers", "Location"),
                    },
                },
                **_errors(400, 409, 413, 503),
            },
            tag="tenants",
            body="NewTenant",
        ),
    },
    "/v1/tenants/{tenant}": {
        "parameters": [_TENANT],
        "get": _operation(
            "getTenant",
            "One tenant.",
            {"200": _ok("The tenant.", "Tenant", etag=True), **_errors(400, 404, 503)},
            tag="tenants",
        ),
        "patch": _operation(
            "updateTenant",
            "Change a tenant's description.",
            {"200": _ok("Changed.", "Tenant", etag=True), **_errors(400, 404, 409, 413, 503)},
            tag="tenants",
            parameters=[_IF_MATCH],
            body="TenantUpdate",
        ),
        "delete": _operation(
            "deleteTenant",
            "Delete a tenant with its policies and API keys.",
            {**_NO_CONTENT, **_errors(400, 404, 409, 503)},
            tag="tenants",
            parameters=[_IF_MATCH],
        ),
    },
    "/v1/tenants/{tenant}/policies": {
        "parameters": [_TENANT],
        "get": _operation(
            "listPolicies",
            "Every policy of a tenant.",
            {"200": _ok("The policies.", "PolicyList"), **_errors(400, 404, 503)},
            tag="policies",
        ),
    },
    "/v1/tenants/{tenant}/policies/{resource}": {
        "parameters": [_TENANT, _RESOURCE],
        "get": _operation(
            "getPolicy",
            "One policy.",
            {"200": _ok("The policy.", "Policy", etag=True), **_errors(400, 404, 503)},
            tag="policies",
        ),
        "put": _operation(
            "putPolicy",
            "Create or replace a whole policy.",
            {
                "200": _ok("Replaced.", "Policy", etag=True),
                "201": {
                    **_ok("Created.", "Policy"),
                    "headers": {
                        "ETag": _ref("headers", "ETag"),
                        "Location": _ref("headers", "Location"),
                    },
                },
                **_errors(400, 404, 409, 413, 503),
            },
            tag="policies",
            parameters=[_IF_MATCH],
            body="PolicyInput",
        ),
        "delete": _operation(
            "deletePolicy",
            "Delete a policy.",
            {**_NO_CONTENT, **_errors(400, 404, 409, 503)},
            tag="policies",
            parameters=[_IF_MATCH],
        ),
    },
    "/v1/tenants/{tenant}/keys": {
        "parameters": [_TENANT],
        "get": _operation(
            "listKeys",
            "A tenant's API keys (never the keys themselves).",
            {"200": _ok("The keys.", "ApiKeyList"), **_errors(400, 404, 503)},
            tag="keys",
        ),
        "post": _operation(
            "issueKey",
            "Issue an API key for a tenant; the key is in this response only.",
            {"201": _ok("Issued.", "IssuedApiKey"), **_errors(400, 404, 409, 413, 503)},
            tag="keys",
            body="NewApiKey",
            body_required=False,
        ),
    },
    "/v1/tenants/{tenant}/keys/{key_id}": {
        "parameters": [_TENANT, _ref("parameters", "key_id")],
        "delete": _operation(
            "revokeKey",
            "Revoke an API key; it stops working at once.",
            {**_NO_CONTENT, **_errors(400, 404, 409, 503)},
            tag="keys",
        ),
    },
    "/v1/tenants/{tenant}/reset": {
        "parameters": [_ref("parameters", "oneTenant")],
        "post": _operation(
            "reset",
            "Forget a tenant's counters (one resource, or all) on every gateway.",
            {
                "202": _ok("Accepted; gateways apply it as they see it.", "Reset"),
                **_errors(400, 404, 409, 413, 503),
            },
            tag="resets",
            body="ResetRequest",
            body_required=False,
            description="Counters belong to one tenant and one resource, so neither may be"
            " a pattern: a tenant or resource ending in '*' is a 400 naming the field, and so"
            " is an empty resource; leave resource out, or null, to reset every resource. The"
            " tenant needs a record of its own, or one of a tenant pattern that matches it"
            " (team-a under team-*); otherwise 404.",
        ),
    },
    "/v1/gateways": {
        "get": _operation(
            "listGateways",
            "The gateways that are alive.",
            {"200": _ok("The gateways.", "GatewayList"), **_errors(503)},
            tag="gateways",
        ),
    },
}

_TIME = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC."}
_REVISION = {
    "type": "integer",
    "minimum": 1,
    "description": 'The store revision that last changed it; sent back as ETag: "<revision>".',
}
_DESCRIPTION = {
    "type": "string",
    "maxLength": MAX_DESCRIPTION_LENGTH,
    "description": f"Free text, at most {MAX_DESCRIPTION_LENGTH} characters.",
}
_COUNT = {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}
_WINDOW = {
    "description": f"A whole number of milliseconds from {MIN_WINDOW_MS} ms to 10 years"
    f" ({MAX_WINDOW_MS // 1000} seconds), bounds included; or a calendar unit.",
    "oneOf": [
        {
            "type": "number",
            "minimum": MIN_WINDOW_MS / 1000,
            "maximum": MAX_WINDOW_MS // 1000,
            "description": "Seconds (0.5 is 500 ms; 0.0015 is refused).",
        },
        {
            "type": "string",
            "description": 'Seconds ("60", "0.5"), a duration ("500ms", "10s", "1.5m", "1h",'
            ' "1d", "1w"), a word (second, minute, hour, day, week), or day / week / month'
            " / year with calendar = true.",
        },
    ],
}
_BAND_PROPERTIES: Document = {
    "limit": _COUNT,
    "window": _WINDOW,
    "burst": {**_COUNT, "description": "Token bucket capacity; defaults to limit."},
    "calendar": {
        "type": "boolean",
        "description": "Align a fixed_window to UTC calendar days, weeks, months or years.",
    },
}
_POLICY_PROPERTIES: Document = {
    "algorithm": {"type": "string", "enum": list(ALGORITHMS), "default": "token_bucket"},
    "bands": {"type": "array", "items": _schema("Band"), "minItems": 1, "maxItems": 8},
    "shadow": {"type": "boolean", "default": False},
    "failure_mode": {"type": "string", "enum": list(FAILURE_MODES), "default": "local"},
    "description": _DESCRIPTION,
}

_SCHEMAS: Document = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "description": "What constraint was broken."},
            "field": {"type": "string", "description": "The field, header or parameter at fault."},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "role", "version"],
        "properties": {
            "status": {"const": "ok"},
            "role": {"type": "string"},
            "version": {"type": "string"},
        },
    },
    "Readiness": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["ready", "not ready"]},
            "reasons": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Tenant": {
        "type": "object",
        "required": ["name", "description", "created_at", "revision"],
        "properties": {
            "name": {"type": "string", "maxLength": MAX_NAME_LENGTH},
            "description": _DESCRIPTION,
            "created_at": _TIME,
            "revision": _REVISION,
        },
    },
    "TenantList": {
        "type": "object",
        "required": ["tenants", "next"],
        "properties": {
            "tenants": {"type": "array", "items": _schema("Tenant")},
            "next": {
                "type": ["string", "null"],
                "description": "The after value for the next page; null on the last page.",
            },
        },
    },
    "NewTenant": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_NAME_LENGTH,
                "description": "A name, or a prefix pattern ending in '*'.",
            },
            "description": _DESCRIPTION,
        },
    },
    "TenantUpdate": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"description": _DESCRIPTION},
    },
    "Band": {
        "type": "object",
        "required": ["limit", "window"],
        "additionalProperties": False,
        "properties": _BAND_PROPERTIES,
    },
    "PolicyInput": {
        "type": "object",
        "description": "One band at the top level (limit, window, burst, calendar), or bands;"
        " the tenant and resource come from the path.",
        "additionalProperties": False,
        "properties": {**_POLICY_PROPERTIES, **_BAND_PROPERTIES},
    },
    "Policy": {
        "type": "object",
        "required": [
            "tenant",
            "resource",
            "algorithm",
            "bands",
            "shadow",
            "failure_mode",
            "revision",
        ],
        "properties": {
            "tenant": {"type": "string"},
            "resource": {"type": "string"},
            **_POLICY_PROPERTIES,
            "revision": _REVISION,
        },
    },
    "PolicyList": {
        "type": "object",
        "required": ["policies"],
        "properties": {"policies": {"type": "array", "items": _schema("Policy")}},
    },
    "ApiKey": {
        "type": "object",
        "required": ["id", "tenant", "prefix", "description", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "tenant": {"type": "string"},
            "prefix": {"type": "string", "description": "The key's first characters."},
            "description": _DESCRIPTION,
            "created_at": _TIME,
        },
    },
    "IssuedApiKey": {
        "allOf": [
            _schema("ApiKey"),
            {
                "type": "object",
                "required": ["key"],
                "properties": {
                    "key": {"type": "string", "description": "The key; shown only here."}
                },
            },
        ]
    },
    "ApiKeyList": {
        "type": "object",
        "required": ["keys"],
        "properties": {"keys": {"type": "array", "items": _schema("ApiKey")}},
    },
    "NewApiKey": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"description": _DESCRIPTION},
    },
    "Gateway": {
        "type": "object",
        "required": ["id", "address", "mode", "version", "revision", "started_at"],
        "properties": {
            "id": {"type": "string"},
            "address": {"type": "string"},
            "mode": {"type": "string", "enum": ["fast", "strong"]},
            "version": {"type": "string"},
            "revision": {
                "type": "integer",
                "description": "The store revision of the policies the gateway serves.",
            },
            "started_at": _TIME,
        },
    },
    "GatewayList": {
        "type": "object",
        "required": ["gateways"],
        "properties": {"gateways": {"type": "array", "items": _schema("Gateway")}},
    },
    "Reset": {
        "type": "object",
        "required": ["id", "tenant", "resource", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "tenant": {"type": "string"},
            "resource": {"type": ["string", "null"], "description": "null: every resource."},
            "created_at": _TIME,
        },
    },
    "ResetRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "resource": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": MAX_NAME_LENGTH,
                "pattern": "[^*]$",
                "description": "Only this resource, not a pattern; omit it, or send null,"
                ' for every resource. An empty resource ("") is a 400.',
            }
        },
    },
}


def _error_response(description: str) -> Document:
    return {"description": description, "content": _json(_schema("Error"))}


_DOCUMENT: Document = {
    "openapi": "3.1.0",
    "info": {
        "title": "Helios control plane",
        "version": __version__,
        "description": "Tenants, their policies and API keys, live gateways and counter"
        " resets. Every route under /v1 needs an admin key. Errors are"
        ' {"error": message, "field": name}; a request answered 4xx has changed nothing.',
    },
    "servers": [{"url": "http://127.0.0.1:8081"}],
    "security": [{"adminKey": []}, {"adminBearer": []}],
    "tags": [
        {"name": name}
        for name in ("tenants", "policies", "keys", "resets", "gateways", "probes", "meta")
    ],
    "paths": _PATHS,
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {
            "adminKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "adminBearer": {"type": "http", "scheme": "bearer"},
        },
        "parameters": {
            "tenant": {
                "name": "tenant",
                "in": "path",
                "required": True,
                "description": "A tenant name, percent-encoded; may end in '*'.",
                "schema": {"type": "string"},
            },
            "oneTenant": {
                "name": "tenant",
                "in": "path",
                "required": True,
                "description": "One tenant, percent-encoded; not a pattern.",
                "schema": {"type": "string", "pattern": "[^*]$"},
            },
            "resource": {
                "name": "resource",
                "in": "path",
                "required": True,
                "description": "A resource name or a prefix pattern ending in '*'. It may"
                " hold '/' and '=' (key1=value1/key2=value2), sent as they are.",
                "schema": {"type": "string"},
            },
            "key_id": {
                "name": "key_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9]+$"},
            },
            "limit": {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_PAGE_SIZE,
                    "default": DEFAULT_PAGE_SIZE,
                },
            },
            "after": {
                "name": "after",
                "in": "query",
                "required": False,
                "description": "Start after this tenant (the next value of the previous page).",
                "schema": {"type": "string"},
            },
            "IfMatch": {
                "name": "If-Match",
                "in": "header",
                "required": False,
                "description": 'Write only if the document is still at this revision: "42".'
                ' For a policy, "0" means it must not exist yet.',
                "schema": {"type": "string", "pattern": '^"[0-9]{1,19}"$'},
            },
        },
        "headers": {
            "ETag": {
                "description": 'The document\'s revision, quoted: "42".',
                "schema": {"type": "string"},
            },
            "Location": {
                "description": "The path of the document created.",
                "schema": {"type": "string"},
            },
        },
        "responses": {
            "BadRequest": _error_response(
                "A field, header or parameter is invalid; or the body is not a JSON object,"
                " or gives a field more than once."
            ),
            "Unauthorized": _error_response("No admin key, or an unknown one."),
            "NotFound": _error_response("No such tenant, policy, key or route."),
            "Conflict": _error_response(
                "It exists already, or changed since it was read (If-Match)."
            ),
            "PayloadTooLarge": _error_response("The body is larger than 1 MiB."),
            "Unavailable": _error_response("The store cannot answer; retry later."),
        },
    },
}


def openapi_document() -> Document:
    """The OpenAPI 3.1 document (a fresh copy the caller may change)."""
    return copy.deepcopy(_DOCUMENT)
