"""Validation of caller input: tenant and resource names, costs."""

from __future__ import annotations

import json

from helios.errors import InvalidRequest

MAX_COST = 1_000_000_000
MAX_NAME_LENGTH = 256

# Control characters could forge log lines or confuse downstream systems; they
# are the only characters a name may not hold.
_CONTROL = frozenset(chr(c) for c in range(0x20)) | {"\x7f"}


def parse_cost(raw: str | None) -> int:
    """Parse a cost given as text: an ASCII decimal integer from 1 to 10**9.

    ``None`` (the parameter is absent) means the default cost of 1.
    """
    if raw is None:
        return 1
    # isdigit() alone would admit non-ASCII digits and int() would admit
    # "+1", " 1" and "1_000"; requiring ASCII digits only rules out all three.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 10:
        raise InvalidRequest(
            f"cost must be an integer from 1 to {MAX_COST}, got {raw!r}", field="cost"
        )
    cost = int(raw)
    if not 1 <= cost <= MAX_COST:
        raise InvalidRequest(
            f"cost must be an integer from 1 to {MAX_COST}, got {raw!r}", field="cost"
        )
    return cost


def coerce_cost(value: object) -> int:
    """Validate a cost that came in a JSON document (an integer, or its text)."""
    if value is None:
        return 1
    if isinstance(value, str):
        return parse_cost(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_COST:
        return value
    raise InvalidRequest(
        f"cost must be an integer from 1 to {MAX_COST}, got {_as_json(value)}", field="cost"
    )


def check_name(value: object, field: str) -> str:
    """Validate a tenant or resource name and return it."""
    if value is None or value == "":
        raise InvalidRequest(f"{field} is required", field=field)
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string, got {_as_json(value)}", field=field)
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidRequest(
            f"{field} must be at most {MAX_NAME_LENGTH} characters, got {len(value)}",
            field=field,
        )
    # isprintable() is a fast C check that passes almost every real name; only
    # names it rejects need the exact (slower) tests.
    if not value.isprintable():
        if not _CONTROL.isdisjoint(value):
            raise InvalidRequest(
                f"{field} must not contain control characters, got {value!r}", field=field
            )
        if any("\ud800" <= char <= "\udfff" for char in value):
            # A lone surrogate (possible in JSON's \u escapes) is not text.
            raise InvalidRequest(f"{field} must be valid Unicode text", field=field)
    return value


def _as_json(value: object) -> str:
    """A value from a JSON document, written as JSON (``true``, ``1.5``, ``[1]``)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def bucket_key(tenant: str, resource: str) -> bytes:
    """The key of the bucket for one (tenant, resource) pair.

    The tenant's length (in characters) comes first, so the split between
    tenant and resource is unambiguous whatever characters either holds:
    tenant ``a:b`` with resource ``c`` gives ``3:a:bc`` and tenant ``a`` with
    resource ``b:c`` gives ``1:ab:c``. The text is stored UTF-8 encoded (an
    injective encoding, so keys stay unique): a bytes object is 16 bytes
    smaller than the same text as a str, for every bucket in memory.
    """
    return f"{len(tenant)}:{tenant}{resource}".encode("utf-8", "surrogatepass")
