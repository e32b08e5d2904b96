"""The gateway role: deciding requests, and the adapters that expose it."""

from __future__ import annotations
