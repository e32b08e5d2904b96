"""The I/O-free parts: hash slots, scripts, redirections, CLUSTER SLOTS replies."""

from __future__ import annotations

import binascii
import hashlib

import pytest

from helios.backends.redis import Address, Script, key_slot
from helios.backends.redis.cluster import parse_cluster_slots
from helios.backends.redis.protocol import command_name, parse_redirect


def test_key_slot_matches_the_specification() -> None:
    # The check value of CRC-16/XMODEM, and the examples of the cluster specification.
    assert key_slot("123456789") == 0x31C3
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers")
    # An empty tag does not count: the whole key is hashed.
    assert key_slot("foo{}{bar}") == binascii.crc_hqx(b"foo{}{bar}", 0) % 16384
    assert key_slot("foo{{bar}}zap") == key_slot("{bar")
    assert key_slot("foo{bar}{zap}") == key_slot("bar")
    assert key_slot(42) == key_slot("42")
    assert key_slot(memoryview(b"abc")) == key_slot(b"abc")


def test_a_script_is_named_by_its_sha1() -> None:
    script = Script("return 1")
    assert script.sha == hashlib.sha1(b"return 1").hexdigest()
    assert Script(b"return 1") == script
    assert hash(Script(b"return 1")) == hash(script)
    assert script.sha in repr(script)


def test_redirections() -> None:
    asked = Address("10.0.0.1", 7000)
    moved = parse_redirect("MOVED 3999 127.0.0.1:6381", asked)
    assert (moved.slot, moved.address) == (3999, Address("127.0.0.1", 6381))
    assert parse_redirect("ASK 1 :7002", asked).address == Address("10.0.0.1", 7002)
    assert parse_redirect("MOVED 2 [::1]:7003", asked).address == Address("::1", 7003)


def test_cluster_slots_replies() -> None:
    reply = [
        [0, 5460, [b"127.0.0.1", 7000, b"id-a"], [b"127.0.0.1", 7003, b"id-d"]],
        [5461, 16383, [b"", 7001, b"id-b"]],
    ]
    assert parse_cluster_slots(reply, Address("seed", 7000)) == [
        (0, 5460, Address("127.0.0.1", 7000)),
        (5461, 16383, Address("seed", 7001)),
    ]
    with pytest.raises(ValueError):
        parse_cluster_slots(b"ERR", Address("seed", 7000))


def test_command_names_never_carry_arguments() -> None:
    assert command_name(("evalsha", "abc", 1, "key")) == "EVALSHA"
    assert command_name((b"auth", b"password")) == "AUTH"
    assert command_name(()) == "(empty command)"
