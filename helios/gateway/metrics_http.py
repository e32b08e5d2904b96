"""The ``/metrics`` endpoint, served by the same lean HTTP server."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from helios.server.http import Request, Response


class MetricsApi:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    async def __call__(self, request: Request) -> Response:
        if request.path != "/metrics":
            return Response(404, b'{"error": "no route; metrics are at /metrics"}')
        if request.method not in ("GET", "HEAD"):
            return Response(405, b'{"error": "use GET"}', b"allow: GET, HEAD\r\n")
        return Response(
            200, generate_latest(self.registry), content_type=CONTENT_TYPE_LATEST.encode()
        )
