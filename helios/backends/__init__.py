"""Where bucket state lives: in memory (FAST mode) or in Redis (STRONG mode)."""

from __future__ import annotations
