"""Logging set-up: one line per event, as text or JSON."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

# A URL's query string (``?name=value...``), which may carry a token: some
# libraries put whole URLs in their warnings (the OTLP exporter, when its
# collector is away, names the endpoint it failed to reach).
_QUERY = re.compile(r"\?[\w.~%+-]+=[^\s'\"()\\]*")


def redact(text: str) -> str:
    """``text`` with each URL query string replaced by ``?[redacted]``."""
    return _QUERY.sub("?[redacted]", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            document["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(document, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level_number = logging.getLevelNamesMapping()[level.upper()]
    # Helios logs under "helios.*" at the configured level. Everything else
    # (hpack, h2, purerpc, urllib3, opentelemetry, httpx, quart...) stays at
    # WARNING or above whatever that level is: their debug and info lines are
    # per-request noise, and some hold request headers or URLs, API keys and
    # tokens among them.
    root.setLevel(max(logging.WARNING, level_number))
    logging.getLogger("helios").setLevel(level_number)
