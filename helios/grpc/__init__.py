"""The gateway's gRPC adapter: Helios's RateLimitService and Envoy's RLS v3, on purerpc."""

from helios.grpc.server import GrpcServer, serve_grpc

__all__ = ["GrpcServer", "serve_grpc"]
