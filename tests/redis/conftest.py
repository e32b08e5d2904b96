"""Fixtures that start real Redis servers (see ``redis_servers.py``) and stop them afterwards."""

from __future__ import annotations

from redis_servers import (  # noqa: F401 - fixtures, found by pytest by name
    redis_cluster,
    redis_sentinel,
    redis_server,
    redis_server_factory,
)
