"""The control plane's operations: tenants, policies, API keys, gateways, resets.

Every transport (REST, gRPC, the admin command line through REST) calls these
methods; they validate, then read and write the key-value store. Every write
is one transaction that compares the revisions it read, so two admins
changing the same thing at once cannot overwrite each other silently: one
wins, the other gets :class:`~helios.errors.Conflict` (409 / ABORTED). A
caller that read a document earlier may pass that ``revision`` as
``expected_revision`` (HTTP ``If-Match``) to make the same check across its
own read and write.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from helios.control.model import (
    ApiKey,
    GatewayInfo,
    Layout,
    Reset,
    StoredPolicy,
    Tenant,
    decode,
    dump,
    load,
    policy_document,
    policy_from_document,
)
from helios.core.names import check_name
from helios.core.policy import check_pattern
from helios.core.windows import shown
from helios.errors import (
    AlreadyExists,
    Conflict,
    HeliosError,
    InvalidRequest,
    NotFound,
    PolicyError,
)
from helios.store.kv import Compare, Delete, Entry, KeyValueStore, Put

# Issued keys: a recognisable prefix, then 256 random bits.
KEY_PREFIX = "hk_"
# How many characters of a key are kept to tell keys apart in listings.
SHOWN_PREFIX_LENGTH = 10
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
# The longest description of a tenant, a policy or an API key, in characters
# (Unicode code points): room for a sentence or two, not for documents that
# every listing would repeat.
MAX_DESCRIPTION_LENGTH = 1000
# A reset stays in the store this long, so that a gateway that was briefly
# disconnected still applies it when it catches up.
RESET_TTL_SECONDS = 300


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Any]
    # The ``after`` value for the next page, or None on the last page.
    next: str | None


def _description(value: object, field: str = "description") -> str:
    """A description as written through the control plane; None stands for none ("")."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string, got {shown(value)}", field="description")
    if len(value) > MAX_DESCRIPTION_LENGTH:
        raise InvalidRequest(
            f"{field} must be at most {MAX_DESCRIPTION_LENGTH} characters, got {len(value)}",
            field="description",
        )
    return value


def _name(value: object, field: str) -> str:
    """:func:`check_name`, showing the value at fault as JSON (``5``, ``true``, ``"a\\u0000"``)."""
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string, got {shown(value)}", field=field)
    if isinstance(value, str) and any(ord(char) < 0x20 or char == "\x7f" for char in value):
        raise InvalidRequest(
            f"{field} must not contain control characters, got {shown(value)}", field=field
        )
    return check_name(value, field)


def check_tenant_name(value: object, field: str = "tenant") -> str:
    """A tenant name: a name, or a prefix pattern ending in ``*`` (``*`` alone: every tenant).

    ``field`` is where the name came from: ``tenant`` (a path, a request
    message) or ``name`` (the body that creates a tenant).
    """
    name = _name(value, field)
    if name in (".", ".."):
        raise InvalidRequest(f"{field} must not be {shown(name)} (a path segment)", field=field)
    if "/" in name:
        # Tenants are addressed by path (/v1/tenants/<tenant>), where a "/" cannot be told
        # from a separator once proxies and servers have decoded the path.
        raise InvalidRequest(f"{field} must not contain '/', got {shown(name)}", field=field)
    try:
        return check_pattern(name, field)
    except PolicyError as error:
        raise InvalidRequest(error.message, field=field) from None


def check_resource_pattern(value: object) -> str:
    name = _name(value, "resource")
    if any(part in (".", "..") for part in name.split("/")):
        # Paths with dot segments are rewritten by HTTP clients and proxies.
        raise InvalidRequest(
            f"resource must not have '.' or '..' between slashes, got {shown(name)}",
            field="resource",
        )
    try:
        return check_pattern(name, "resource")
    except PolicyError as error:
        raise InvalidRequest(error.message, field="resource") from None


def key_digest(key: str) -> str:
    """The SHA-256 of an API key, hex (what the store keeps)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


class ControlPlane:
    """Tenants, their policies and API keys, live gateways, counter resets."""

    def __init__(
        self,
        store: KeyValueStore,
        layout: Layout | None = None,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.layout = layout or Layout()
        # Only for the timestamps shown to admins; nothing decides on it.
        self._wall_clock = wall_clock

    # Tenants.

    async def list_tenants(self, *, limit: int = DEFAULT_PAGE_SIZE, after: str = "") -> Page:
        """One page of tenants in name order, starting after the tenant ``after``."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidRequest(
                f"limit must be an integer from 1 to {MAX_PAGE_SIZE}, got {limit}", field="limit"
            )
        start_after = self.layout.tenant(after) if after else ""
        entries, _ = await self.store.range(
            self.layout.tenants(), start_after=start_after, limit=limit + 1
        )
        tenants = [self._tenant(entry) for entry in entries[:limit]]
        more = len(entries) > limit
        return Page(tenants, tenants[-1].name if more else None)

    async def get_tenant(self, name: object) -> Tenant:
        name = check_tenant_name(name)
        entry = await self.store.get(self.layout.tenant(name))
        if entry is None:
            raise NotFound(f"tenant {name!r} does not exist", field="tenant")
        return self._tenant(entry)

    async def create_tenant(self, name: object, description: object = None) -> Tenant:
        # The name is the body's (or the request message's) field "name".
        name = check_tenant_name(name, "name")
        text = _description(description)
        key = self.layout.tenant(name)
        document = {"name": name, "description": text, "created_at": self._wall_clock()}
        revision = await self.store.commit([Compare(key, 0)], [Put(key, dump(document))])
        if revision is None:
            raise AlreadyExists(f"tenant {name!r} already exists", field="name")
        return Tenant(name, text, document["created_at"], revision)  # type: ignore[arg-type]

    async def update_tenant(
        self, name: object, description: object, *, expected_revision: int | None = None
    ) -> Tenant:
        if description is None:
            raise InvalidRequest("description is required (a string)", field="description")
        current = await self.get_tenant(name)
        self._expect(current.revision, expected_revision, f"tenant {current.name!r}")
        text = _description(description)
        key = self.layout.tenant(current.name)
        document = {"name": current.name, "description": text, "created_at": current.created_at}
        revision = await self.store.commit(
            [Compare(key, current.revision)], [Put(key, dump(document))]
        )
        if revision is None:
            raise self._conflict(f"tenant {current.name!r}")
        return Tenant(current.name, text, current.created_at, revision)

    async def delete_tenant(self, name: object, *, expected_revision: int | None = None) -> None:
        """Delete a tenant with its policies and API keys (its keys stop working at once)."""
        current = await self.get_tenant(name)
        self._expect(current.revision, expected_revision, f"tenant {current.name!r}")
        revision = await self.store.commit(
            [Compare(self.layout.tenant(current.name), current.revision)],
            [
                Delete(self.layout.tenant(current.name)),
                Delete(self.layout.policies(current.name), prefix=True),
                Delete(self.layout.keys(current.name), prefix=True),
            ],
        )
        if revision is None:
            raise self._conflict(f"tenant {current.name!r}")

    # Policies.

    async def list_policies(self, tenant: object) -> list[StoredPolicy]:
        current = await self.get_tenant(tenant)
        entries, _ = await self.store.range(self.layout.policies(current.name))
        return [self._policy(entry) for entry in entries]

    async def get_policy(self, tenant: object, resource: object) -> StoredPolicy:
        current = await self.get_tenant(tenant)
        resource = check_resource_pattern(resource)
        entry = await self.store.get(self.layout.policy(current.name, resource))
        if entry is None:
            raise NotFound(
                f"tenant {current.name!r} has no policy for resource {resource!r}",
                field="resource",
            )
        return self._policy(entry)

    async def put_policy(
        self,
        tenant: object,
        resource: object,
        document: object,
        *,
        expected_revision: int | None = None,
    ) -> tuple[StoredPolicy, bool]:
        """Create or replace the whole policy; returns it and whether it was created.

        Gateways keep the units already spent under the old policy (see
        docs/policies.md): a change never refills a bucket.
        """
        tenant_name = check_tenant_name(tenant)
        resource = check_resource_pattern(resource)
        policy = self._parse_policy(tenant_name, resource, document)
        current = await self.get_tenant(tenant_name)
        key = self.layout.policy(current.name, resource)
        existing = await self.store.get(key)
        read_revision = existing.mod_revision if existing is not None else 0
        where = f"policy {current.name}/{resource}"
        if expected_revision == 0 and read_revision:
            raise AlreadyExists(
                f"{where} already exists (revision {read_revision})", field="revision"
            )
        if expected_revision is not None and expected_revision != read_revision:
            raise self._conflict(where, read_revision)
        revision = await self.store.commit(
            [
                Compare(self.layout.tenant(current.name), current.revision),
                Compare(key, read_revision),
            ],
            [Put(key, dump(policy_document(policy)))],
        )
        if revision is None:
            raise self._conflict(where)
        return StoredPolicy(policy, revision), existing is None

    async def delete_policy(
        self, tenant: object, resource: object, *, expected_revision: int | None = None
    ) -> None:
        stored = await self.get_policy(tenant, resource)
        policy = stored.policy
        where = f"policy {policy.tenant}/{policy.resource}"
        self._expect(stored.revision, expected_revision, where)
        key = self.layout.policy(policy.tenant, policy.resource)
        revision = await self.store.commit([Compare(key, stored.revision)], [Delete(key)])
        if revision is None:
            raise self._conflict(where)

    @staticmethod
    def _parse_policy(tenant: str, resource: str, document: object) -> Any:
        if not isinstance(document, Mapping):
            raise InvalidRequest("the request body must be a JSON object", field="body")
        for name, expected in (("tenant", tenant), ("resource", resource)):
            if name in document and document[name] != expected:
                raise InvalidRequest(
                    f"policy.{name} is {shown(document[name])} but the path says"
                    f" {shown(expected)}; leave {name} out of the body",
                    field=name,
                )
        if "revision" in document:
            raise InvalidRequest(
                "policy.revision: unknown field (send the revision in If-Match)",
                field="revision",
            )
        policy = policy_from_document(tenant, resource, document)
        # Bounded here, where admins write policies, rather than in the parser
        # the gateways load them with: a policy stored before the bound still loads.
        _description(policy.description, "policy.description")
        return policy

    # API keys.

    async def issue_key(self, tenant: object, description: object = None) -> tuple[ApiKey, str]:
        """Issue a key for a tenant; returns its record and the key, which is never shown again."""
        current = await self.get_tenant(tenant)
        if current.name.endswith("*"):
            raise InvalidRequest(
                f"keys are issued to one tenant, not to the pattern {current.name!r}",
                field="tenant",
            )
        text = _description(description)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKey(
            id=secrets.token_hex(8),
            tenant=current.name,
            prefix=secret[:SHOWN_PREFIX_LENGTH],
            sha256=key_digest(secret),
            description=text,
            created_at=self._wall_clock(),
        )
        key = self.layout.key(current.name, record.id)
        revision = await self.store.commit(
            [Compare(self.layout.tenant(current.name), current.revision), Compare(key, 0)],
            [Put(key, dump(record.document()))],
        )
        if revision is None:
            raise self._conflict(f"tenant {current.name!r}")
        return record, secret

    async def list_keys(self, tenant: object) -> list[ApiKey]:
        current = await self.get_tenant(tenant)
        entries, _ = await self.store.range(self.layout.keys(current.name))
        return [ApiKey.from_document(load(entry.value, entry.key)) for entry in entries]

    async def revoke_key(self, tenant: object, key_id: object) -> None:
        current = await self.get_tenant(tenant)
        if not isinstance(key_id, str) or not key_id.isalnum() or not key_id.isascii():
            raise InvalidRequest(
                f"key id must be letters and digits, got {shown(key_id)}", field="id"
            )
        key = self.layout.key(current.name, key_id)
        entry = await self.store.get(key)
        if entry is None:
            raise NotFound(f"tenant {current.name!r} has no API key {key_id!r}", field="id")
        revision = await self.store.commit([Compare(key, entry.mod_revision)], [Delete(key)])
        if revision is None:
            raise self._conflict(f"API key {key_id!r}")

    # Gateways and resets.

    async def list_gateways(self) -> list[GatewayInfo]:
        """The gateways whose registration lease is alive."""
        entries, _ = await self.store.range(self.layout.gateways())
        return [GatewayInfo.from_document(load(entry.value, entry.key)) for entry in entries]

    async def reset(self, tenant: object, resource: object = None) -> Reset:
        """Ask every gateway to forget one tenant's counters (one resource, or all).

        Counters belong to concrete names, so neither may be a pattern. The
        tenant needs a record of its own or one of a pattern that covers it
        (``team-a`` under ``team-*``). Gateways apply the reset as they see it:
        in FAST mode each clears its own buckets; in STRONG mode the buckets in
        Redis are deleted.
        """
        name = check_tenant_name(tenant)
        if name.endswith("*"):
            raise InvalidRequest(
                f"counters are reset for one tenant, not for the pattern {name!r};"
                " name a tenant it matches",
                field="tenant",
            )
        if resource == "":
            raise InvalidRequest(
                "resource must not be empty; leave it out (or null) to reset every resource",
                field="resource",
            )
        only = None if resource is None else _name(resource, "resource")
        if only is not None and only.endswith("*"):
            raise InvalidRequest(
                f"a reset is for one resource, not for the pattern {only!r};"
                " leave resource out to reset every resource",
                field="resource",
            )
        covering = await self._tenant_covering(name)
        record = Reset(secrets.token_hex(8), name, only, self._wall_clock())
        lease = await self.store.grant_lease(RESET_TTL_SECONDS)
        revision = await self.store.commit(
            [Compare(self.layout.tenant(covering.name), covering.revision)],
            [Put(self.layout.reset(record.id), dump(record.document()), lease=lease)],
        )
        if revision is None:
            raise self._conflict(f"tenant {covering.name!r}")
        return record

    async def _tenant_covering(self, name: str) -> Tenant:
        """The tenant's own record, or else the most specific pattern's that matches it."""
        entry = await self.store.get(self.layout.tenant(name))
        if entry is not None:
            return self._tenant(entry)
        # Resets are rare: one read of every tenant beats a read per prefix of the name.
        prefix = self.layout.tenants()
        entries, _ = await self.store.range(prefix)
        patterns: dict[str, Entry] = {}
        for entry in entries:
            pattern = decode(entry.key[len(prefix) :])
            if pattern.endswith("*") and name.startswith(pattern[:-1]):
                patterns[pattern] = entry
        if not patterns:
            raise NotFound(
                f"tenant {name!r} does not exist and no tenant pattern matches it",
                field="tenant",
            )
        return self._tenant(patterns[max(patterns, key=len)])

    # Helpers.

    def _tenant(self, entry: Entry) -> Tenant:
        document = load(entry.value, entry.key)
        try:
            return Tenant(
                str(document["name"]),
                str(document.get("description", "")),
                float(document["created_at"]),
                entry.mod_revision,
            )
        except (KeyError, TypeError, ValueError):
            raise HeliosError(f"the store holds a malformed tenant at {entry.key}") from None

    def _policy(self, entry: Entry) -> StoredPolicy:
        _, (tenant, resource) = self.layout.kind(entry.key)
        policy = policy_from_document(tenant, resource, load(entry.value, entry.key))
        return StoredPolicy(policy, entry.mod_revision)

    def _expect(self, revision: int, expected: int | None, what: str) -> None:
        if expected is not None and expected != revision:
            raise self._conflict(what, revision)

    @staticmethod
    def _conflict(what: str, revision: int | None = None) -> Conflict:
        now = f" (now at revision {revision})" if revision is not None else ""
        return Conflict(
            f"{what} was changed by someone else{now}; read it again and retry",
            field="revision",
        )
