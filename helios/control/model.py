"""What the control plane stores, and where: key layout and documents.

Everything lives under one prefix (``store.prefix``, ``/helios/`` by default)
as JSON documents, one per key::

    <prefix>tenants/<tenant>              {"name", "description", "created_at"}
    <prefix>policies/<tenant>/<resource>  the policy in its JSON shape
    <prefix>keys/<tenant>/<key id>        {"id", "tenant", "prefix", "sha256", ...}
    <prefix>gateways/<gateway id>         a live gateway (kept by a lease)
    <prefix>resets/<reset id>             a counter reset (kept by a lease)

Tenant and resource names are percent-encoded in keys, so no name can reach
into another's keys (``/`` is encoded). The gateways and the control plane
both read this layout; nothing else does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

from helios.core.policy import Policy, parse_policy
from helios.errors import HeliosError

DEFAULT_PREFIX = "/helios/"

TENANTS = "tenants/"
POLICIES = "policies/"
KEYS = "keys/"
GATEWAYS = "gateways/"
RESETS = "resets/"


def encode(name: str) -> str:
    return quote(name, safe="")


def decode(part: str) -> str:
    return unquote(part)


class Layout:
    """Keys of every document under one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not prefix.endswith("/"):
            prefix += "/"
        self.prefix = prefix

    def tenant(self, tenant: str) -> str:
        return f"{self.prefix}{TENANTS}{encode(tenant)}"

    def tenants(self) -> str:
        return f"{self.prefix}{TENANTS}"

    def policy(self, tenant: str, resource: str) -> str:
        return f"{self.prefix}{POLICIES}{encode(tenant)}/{encode(resource)}"

    def policies(self, tenant: str | None = None) -> str:
        if tenant is None:
            return f"{self.prefix}{POLICIES}"
        return f"{self.prefix}{POLICIES}{encode(tenant)}/"

    def key(self, tenant: str, key_id: str) -> str:
        return f"{self.prefix}{KEYS}{encode(tenant)}/{key_id}"

    def keys(self, tenant: str | None = None) -> str:
        if tenant is None:
            return f"{self.prefix}{KEYS}"
        return f"{self.prefix}{KEYS}{encode(tenant)}/"

    def gateway(self, gateway_id: str) -> str:
        return f"{self.prefix}{GATEWAYS}{encode(gateway_id)}"

    def gateways(self) -> str:
        return f"{self.prefix}{GATEWAYS}"

    def reset(self, reset_id: str) -> str:
        return f"{self.prefix}{RESETS}{reset_id}"

    def resets(self) -> str:
        return f"{self.prefix}{RESETS}"

    def kind(self, key: str) -> tuple[str, list[str]]:
        """Split a key into its kind (``tenants/``, ...) and its decoded name parts."""
        rest = key[len(self.prefix) :]
        kind, _, names = rest.partition("/")
        return kind + "/", [decode(part) for part in names.split("/")]


def timestamp(seconds: float) -> str:
    """An RFC 3339 UTC time, to the second, as the API shows times."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def dump(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def load(value: bytes, key: str) -> dict[str, Any]:
    try:
        document = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise HeliosError(f"the store holds a document that is not JSON at {key}") from None
    if not isinstance(document, dict):
        raise HeliosError(f"the store holds a document that is not a JSON object at {key}")
    return document


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    description: str
    created_at: float
    revision: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "created_at": timestamp(self.created_at),
            "revision": self.revision,
        }


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    policy: Policy
    revision: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.policy.to_dict(), "revision": self.revision}


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An issued API key, as stored: never the key itself, only its SHA-256."""

    id: str
    tenant: str
    prefix: str
    sha256: str
    description: str
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        """The key as listed (no hash: it would only help an attacker)."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "prefix": self.prefix,
            "description": self.description,
            "created_at": timestamp(self.created_at),
        }

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "prefix": self.prefix,
            "sha256": self.sha256,
            "description": self.description,
            "created_at": self.created_at,
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ApiKey:
        return cls(
            str(document["id"]),
            str(document["tenant"]),
            str(document["prefix"]),
            str(document["sha256"]),
            str(document.get("description", "")),
            float(document["created_at"]),
        )


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    """A live gateway, as it registers itself."""

    id: str
    address: str
    mode: str
    version: str
    revision: int
    started_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "address": self.address,
            "mode": self.mode,
            "version": self.version,
            "revision": self.revision,
            "started_at": timestamp(self.started_at),
        }

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "address": self.address,
            "mode": self.mode,
            "version": self.version,
            "revision": self.revision,
            "started_at": self.started_at,
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> GatewayInfo:
        return cls(
            str(document["id"]),
            str(document["address"]),
            str(document["mode"]),
            str(document["version"]),
            int(document["revision"]),
            float(document["started_at"]),
        )


@dataclass(frozen=True, slots=True)
class Reset:
    """A request to forget the counters of a tenant (one resource, or all)."""

    id: str
    tenant: str
    resource: str | None
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "resource": self.resource,
            "created_at": timestamp(self.created_at),
        }

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "resource": self.resource,
            "created_at": self.created_at,
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Reset:
        resource = document.get("resource")
        return cls(
            str(document["id"]),
            str(document["tenant"]),
            None if resource is None else str(resource),
            float(document["created_at"]),
        )


def policy_from_document(tenant: str, resource: str, document: Mapping[str, Any]) -> Policy:
    """The stored policy document as a :class:`Policy` (tenant and resource from the key)."""
    body = {k: v for k, v in document.items() if k not in ("tenant", "resource")}
    return parse_policy({**body, "tenant": tenant, "resource": resource}, where="policy")


def policy_document(policy: Policy) -> dict[str, Any]:
    """The document stored for a policy: its JSON shape without the names in the key."""
    document = policy.to_dict()
    del document["tenant"], document["resource"]
    return document
