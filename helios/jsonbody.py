"""JSON request bodies, read one way by every API: the data plane, the control plane, the CLI.

A body must be one JSON object; no object in it may give a field twice
(``json.loads`` would keep the last silently: of ``{"cost": 1, "cost": 5}``,
which did the caller mean?). Errors name the field at fault, or ``body``.
"""

from __future__ import annotations

import json
from typing import Any

from helios.errors import InvalidRequest


def unique_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's fields as a dict, refusing a field given twice (an object_pairs_hook)."""
    document = dict(pairs)
    if len(document) < len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise InvalidRequest(f"field {name!r} is given more than once", field=name)
            seen.add(name)
    return document


def parse_object(data: bytes) -> dict[str, Any]:
    """The JSON object in a request body; errors say what is wrong with it."""
    try:
        document = json.loads(data, object_pairs_hook=unique_fields)
    except UnicodeDecodeError:
        raise InvalidRequest("the request body is not valid JSON", field="body") from None
    except ValueError as error:
        if "integer string conversion" in str(error):
            # Python refuses to read integers of thousands of digits.
            raise InvalidRequest(
                "the request body holds a number too long to read", field="body"
            ) from None
        raise InvalidRequest("the request body is not valid JSON", field="body") from None
    except RecursionError:
        raise InvalidRequest("the request body nests too deeply", field="body") from None
    if not isinstance(document, dict):
        raise InvalidRequest("the request body must be a JSON object", field="body")
    return document
