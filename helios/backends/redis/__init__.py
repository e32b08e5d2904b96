"""STRONG mode's Redis: a pipelined trio client for one server, a cluster or a sentinel's master.

:func:`open_redis` picks the client for a URL (see :mod:`.url` for the forms);
every client offers the :class:`RedisLike` interface.
"""

from __future__ import annotations

from helios.backends.redis.client import ClientOptions, Redis, RedisLike, RedisStatistics
from helios.backends.redis.cluster import ClusterStatistics, RedisCluster
from helios.backends.redis.connection import ConnectionSettings, RedisConnection, open_connection
from helios.backends.redis.errors import RedisCommandError, RedisTimeout, RedisUnavailable
from helios.backends.redis.factory import client_for, open_redis
from helios.backends.redis.protocol import Address, CommandArg, Reply, Script, key_slot
from helios.backends.redis.sentinel import RedisSentinel
from helios.backends.redis.url import RedisTarget, parse_redis_url, redact

__all__ = [
    "Address",
    "ClientOptions",
    "ClusterStatistics",
    "CommandArg",
    "ConnectionSettings",
    "Redis",
    "RedisCluster",
    "RedisCommandError",
    "RedisConnection",
    "RedisLike",
    "RedisSentinel",
    "RedisStatistics",
    "RedisTarget",
    "RedisTimeout",
    "RedisUnavailable",
    "Reply",
    "Script",
    "client_for",
    "key_slot",
    "open_connection",
    "open_redis",
    "parse_redis_url",
    "redact",
]
