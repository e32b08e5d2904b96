"""API keys of the data plane.

Keys are held only as SHA-256 digests and compared with
:func:`hmac.compare_digest`. Global keys (``HELIOS_ALLOWED_API_KEYS``) may act
for any tenant; tenant keys act for their own tenant only.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from hashlib import sha256

from helios.errors import PermissionDenied, Unauthenticated


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class KeyRing:
    """The API keys a gateway accepts."""

    def __init__(
        self,
        global_keys: Iterable[str] = (),
        tenant_keys: Iterable[tuple[str, bytes]] = (),
        *,
        disabled: bool = False,
    ) -> None:
        self.disabled = disabled
        self._global = [digest(key) for key in global_keys]
        # digest → tenant. Lookup timing can depend only on the digest, which
        # tells an attacker nothing about any key.
        self._tenant = {key_digest: tenant for tenant, key_digest in tenant_keys}

    def set_tenant_keys(self, tenant_keys: Iterable[tuple[str, bytes]]) -> None:
        """Replace the tenant keys (``(tenant, SHA-256 digest)`` pairs) at once."""
        self._tenant = {key_digest: tenant for tenant, key_digest in tenant_keys}

    @property
    def tenant_key_count(self) -> int:
        return len(self._tenant)

    @property
    def empty(self) -> bool:
        return not self._global and not self._tenant

    def authorize(self, key: str | None, tenant: str) -> None:
        """Raise unless ``key`` may act for ``tenant``."""
        self.permit(self.identify(key), tenant)

    def identify(self, key: str | None) -> str | None:
        """Who ``key`` speaks for: a tenant, or ``None`` for every tenant.

        Raises :class:`Unauthenticated` for a missing or unknown key.
        """
        if self.disabled:
            return None
        if not key:
            raise Unauthenticated(
                "an API key is required (X-API-Key header, Authorization: Bearer,"
                " or api_key parameter)",
                field="api_key",
            )
        # digest(), inlined: this runs on every request.
        presented = sha256(key.encode("utf-8", "surrogateescape")).digest()
        matched = False
        for known in self._global:
            # No early exit: the time taken does not depend on which key matched.
            matched |= hmac.compare_digest(presented, known)
        if matched:
            return None
        owner = self._tenant.get(presented)
        if owner is None:
            raise Unauthenticated("unknown API key", field="api_key")
        return owner

    @staticmethod
    def permit(owner: str | None, tenant: str) -> None:
        """Raise :class:`PermissionDenied` unless ``owner`` may act for ``tenant``."""
        if owner is not None and owner != tenant:
            raise PermissionDenied(
                f"this API key belongs to another tenant, not {tenant!r}", field="api_key"
            )
