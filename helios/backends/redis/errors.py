"""The errors of the Redis client.

All of them are :class:`~helios.errors.BackendError` (HTTP 503, gRPC
UNAVAILABLE): whatever went wrong, Redis cannot decide right now, and the
policy's ``failure_mode`` says what happens instead.
"""

from __future__ import annotations

from helios.errors import BackendError


class RedisUnavailable(BackendError):
    """Redis cannot be reached: connection refused, lost, closed or unauthenticated."""


class RedisTimeout(RedisUnavailable):
    """Redis did not answer within the call's timeout."""


class RedisCommandError(BackendError):
    """Redis answered a command with an error reply.

    ``code`` is the reply's first word (``ERR``, ``WRONGTYPE``, ``NOSCRIPT``,
    ``MOVED``, ...) and ``server_message`` the whole text, as the server sent it.
    """

    def __init__(self, server_message: str) -> None:
        super().__init__(f"redis answered with an error: {server_message}")
        self.server_message = server_message
        self.code = server_message.split(" ", 1)[0]
