"""Helios: a multi-tenant rate-limiting service.

The decision core lives in :mod:`helios.core` (pure, synchronous, no I/O); the
backends in :mod:`helios.backends`; the network adapters in :mod:`helios.gateway`
and :mod:`helios.server`; process wiring in :mod:`helios.runtime`.
"""

from __future__ import annotations

__version__ = "0.1.0"
