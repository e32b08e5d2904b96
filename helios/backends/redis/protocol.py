"""The parts of talking to Redis that need no I/O.

Command encoding (RESP2 arrays of bulk strings, done in C by hiredis), the
shape of replies, Lua scripts named by their SHA-1, and the cluster's hash
slots and redirections.
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import hiredis

#: What a command argument may be: text is sent UTF-8 encoded, numbers as decimal text.
CommandArg: TypeAlias = bytes | str | int | float | memoryview

#: A decoded RESP2 reply: ``bytes`` (simple and bulk strings), ``int``, ``None``
#: (nil) or a ``list`` of replies. Error replies never reach callers as values;
#: they are raised as :class:`~helios.backends.redis.errors.RedisCommandError`.
Reply: TypeAlias = Any

#: Encodes one command. hiredis' stub types the argument as a 1-tuple and leaves
#: out the return type; it takes a tuple of any length and returns bytes.
encode_command = cast(Callable[[tuple[CommandArg, ...]], bytes], hiredis.pack_command)

#: The number of hash slots of a Redis Cluster.
SLOT_COUNT = 16384

# Error replies whose first word the clients act on instead of failing the call.
MOVED = "MOVED"
ASK = "ASK"
NOSCRIPT = "NOSCRIPT"
READONLY = "READONLY"
TRYAGAIN = "TRYAGAIN"
CLUSTERDOWN = "CLUSTERDOWN"
LOADING = "LOADING"


@dataclass(frozen=True, slots=True)
class Address:
    """Where one Redis server (or sentinel) listens."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Script:
    """A Lua script, named by the SHA-1 of its source as ``EVALSHA`` needs it."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str | bytes) -> None:
        self.source = source.encode() if isinstance(source, str) else bytes(source)
        # The same digest Redis computes in SCRIPT LOAD: hex, lower case.
        self.sha = hashlib.sha1(self.source, usedforsecurity=False).hexdigest()

    def __repr__(self) -> str:
        return f"Script(sha={self.sha!r}, {len(self.source)} bytes)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Script) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.sha)


def evalsha_command(
    script: Script, keys: tuple[CommandArg, ...], args: tuple[CommandArg, ...]
) -> tuple[CommandArg, ...]:
    return ("EVALSHA", script.sha, len(keys), *keys, *args)


def command_name(command: tuple[CommandArg, ...]) -> str:
    """The command's name for messages; never its arguments, which may hold secrets."""
    if not command:
        return "(empty command)"
    name = command[0]
    if isinstance(name, bytes | memoryview):
        return bytes(name).decode("ascii", "replace").upper()
    return str(name).upper()


def key_bytes(key: CommandArg) -> bytes:
    """A key as the server sees it on the wire."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, memoryview):
        return key.tobytes()
    return str(key).encode()


def key_slot(key: CommandArg) -> int:
    """The cluster hash slot of ``key``: CRC16/XMODEM of the key modulo 16384.

    Only the part between the first ``{`` and the next ``}`` counts when that
    part is not empty (a "hash tag"), so that related keys share one slot.
    """
    data = key_bytes(key)
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    # crc_hqx is CRC-16/CCITT with the polynomial 0x1021; started from 0 it is
    # exactly the XMODEM variant the cluster specification prescribes.
    return binascii.crc_hqx(data, 0) & (SLOT_COUNT - 1)


@dataclass(frozen=True, slots=True)
class Redirect:
    """A ``MOVED`` or ``ASK`` reply: the slot now (or for this key) lives elsewhere."""

    slot: int
    address: Address


def parse_redirect(server_message: str, asked: Address) -> Redirect:
    """Parse ``MOVED 3999 127.0.0.1:6381`` (or ``ASK ...``).

    An empty host (``MOVED 3999 :6381``) means the host of the node that was
    asked; a server announces that when it does not know its own address.
    """
    _, slot, endpoint = server_message.split(" ", 2)
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]") or asked.host
    return Redirect(int(slot), Address(host, int(port)))
