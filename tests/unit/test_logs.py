"""Log lines: what the formatters write, and what they never write."""

from __future__ import annotations

import json
import logging

from helios.logs import JsonFormatter, TextFormatter, redact


def test_query_strings_are_redacted_wherever_they_appear() -> None:
    assert redact("POST http://collector:4318/v1/traces?token=s3cr3t&x=1 failed") == (
        "POST http://collector:4318/v1/traces?[redacted] failed"
    )
    assert redact("Max retries exceeded with url: /v1/traces?api_key=k (Caused by X)") == (
        "Max retries exceeded with url: /v1/traces?[redacted] (Caused by X)"
    )
    # Text that only looks like a question is left alone.
    assert redact("is the store up? yes") == "is the store up? yes"


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("urllib3", logging.WARNING, __file__, 1, message, args, None)


def test_both_formats_redact_messages_and_their_arguments() -> None:
    record = _record("could not reach %s", "https://h/p?token=t0k3n")
    text = TextFormatter().format(record)
    document = json.loads(JsonFormatter().format(record))
    assert "t0k3n" not in text and text.endswith("could not reach https://h/p?[redacted]")
    assert document["message"] == "could not reach https://h/p?[redacted]"
