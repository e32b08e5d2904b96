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

import dataclasses
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


class _Document:
    """A record stored as a JSON document: times as Unix seconds in the store,
    as RFC 3339 text in the API."""

    __slots__ = ()
    # Fields the API does not show.
    _hidden: tuple[str, ...] = ()

    def document(self) -> dict[str, Any]:
        """The record as the store keeps it."""
        return dataclasses.asdict(self)  # type: ignore[call-overload, no-any-return]

    def to_dict(self) -> dict[str, Any]:
        """The record as the API shows it."""
        shown = {k: v for k, v in self.document().items() if k not in self._hidden}
        for name in ("created_at", "started_at"):
            if name in shown:
                shown[name] = timestamp(shown[name])
        return shown

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Any:
        """The record from its stored document; KeyError/TypeError/ValueError if malformed."""
        values = {}
        for item in dataclasses.fields(cls):  # type: ignore[arg-type]
            if item.name in _OPTIONAL and document.get(item.name) is None:
                values[item.name] = None if item.type == "str | None" else ""
                continue
            values[item.name] = _CONVERT[item.type](document[item.name])  # type: ignore[index]
        return cls(**values)


_CONVERT: dict[str, Any] = {"str": str, "int": int, "float": float, "str | None": str}
# Fields a document may leave out (older records, or null).
_OPTIONAL = frozenset({"description", "resource"})


@dataclass(frozen=True, slots=True)
class ApiKey(_Document):
    """An issued API key, as stored: never the key itself, only its SHA-256."""

    # The API never shows the hash: it would only help an attacker.
    _hidden = ("sha256",)

    id: str
    tenant: str
    prefix: str
    sha256: str
    description: str
    created_at: float


@dataclass(frozen=True, slots=True)
class GatewayInfo(_Document):
    """A live gateway, as it registers itself."""

    id: str
    address: str
    mode: str
    version: str
    revision: int
    started_at: float


@dataclass(frozen=True, slots=True)
class Reset(_Document):
    """A request to forget the counters of a tenant (one resource, or all)."""

    id: str
    tenant: str
    resource: str | None
    created_at: float


def policy_from_document(tenant: str, resource: str, document: Mapping[str, Any]) -> Policy:
    """The stored policy document as a :class:`Policy` (tenant and resource from the key)."""
    body = {k: v for k, v in document.items() if k not in ("tenant", "resource")}
    return parse_policy({**body, "tenant": tenant, "resource": resource}, where="policy")


def policy_document(policy: Policy) -> dict[str, Any]:
    """The document stored for a policy: its JSON shape without the names in the key."""
    document = policy.to_dict()
    del document["tenant"], document["resource"]
    return document
