"""Every error Helios raises on purpose.

Each error carries the HTTP status and gRPC status code an adapter answers with,
so the adapters translate errors without ladders of ``isinstance`` checks.
Caller faults (:class:`InvalidRequest` and friends) are kept apart from backend
faults (:class:`BackendError`): a caller fault is the client's to fix, a backend
fault is the operator's.
"""

from __future__ import annotations


class HeliosError(Exception):
    """Base of all Helios errors."""

    http_status = 500
    grpc_code = "INTERNAL"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ConfigError(HeliosError):
    """The configuration or a policy file is invalid; start-up stops."""


class PolicyError(ConfigError):
    """A policy does not describe a valid limit."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


# Caller faults.


class InvalidRequest(HeliosError):
    """The request is malformed or a field breaks its constraint."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class Unauthenticated(HeliosError):
    """No API key, or one that Helios does not know."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class PermissionDenied(HeliosError):
    """The API key belongs to another tenant."""

    http_status = 403
    grpc_code = "PERMISSION_DENIED"


class NotFound(HeliosError):
    """No policy matches, or no such route."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class Conflict(HeliosError):
    """The thing exists already, or changed since the caller read it."""

    http_status = 409
    grpc_code = "ABORTED"


class AlreadyExists(Conflict):
    """Something with this name exists already."""

    grpc_code = "ALREADY_EXISTS"


class MethodNotAllowed(HeliosError):
    http_status = 405
    grpc_code = "UNIMPLEMENTED"

    def __init__(self, method: str, allowed: tuple[str, ...]) -> None:
        super().__init__(f"method {method} is not allowed here; use {', '.join(allowed)}")
        self.allowed = allowed


class PayloadTooLarge(HeliosError):
    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class HeadersTooLarge(HeliosError):
    http_status = 431
    grpc_code = "RESOURCE_EXHAUSTED"


# Backend faults.


class BackendError(HeliosError):
    """A backend cannot decide right now; the client may retry."""

    http_status = 503
    grpc_code = "UNAVAILABLE"

    def __init__(
        self, message: str, *, field: str | None = None, retry_after_seconds: int = 1
    ) -> None:
        super().__init__(message, field=field)
        self.retry_after_seconds = retry_after_seconds


class CapacityExhausted(BackendError):
    """The bucket table is full of buckets that still hold information.

    Evicting one of them could hand a throttled key a fresh bucket, so the new
    key is refused instead.
    """
