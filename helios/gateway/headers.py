"""What the rate-limit headers share, whichever transport writes them.

The HTTP API writes ``RateLimit-Policy`` and ``RateLimit`` (the IETF
rate-limit headers) on its responses; Envoy's rate limit service hands the
same headers to Envoy, which adds them to its own.
"""

from __future__ import annotations

from helios.core.policy import Band


def structured_string(text: str) -> str:
    """``text`` as a structured-field string (RFC 8941): printable ASCII, escaped."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text)
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def window_parameter(band: Band) -> int:
    """The ``w`` of a band's ``RateLimit-Policy`` item: its window in whole seconds, at least 1."""
    return max(1, round(band.window_seconds))
