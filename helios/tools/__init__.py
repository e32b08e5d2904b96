"""Small operator and build tools that ship with Helios."""

from __future__ import annotations
