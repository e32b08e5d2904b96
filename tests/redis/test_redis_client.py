"""The standalone client against real redis-server processes."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import trio
from redis_servers import RedisServer, free_ports, self_signed_certificate

from helios.backends.redis import (
    Address,
    ClientOptions,
    Redis,
    RedisCommandError,
    RedisTimeout,
    RedisUnavailable,
    Script,
    open_redis,
)

# Generous per-call deadline for tests that are not about timeouts: a loaded
# CI machine must not turn them into timeout tests.
SLOW_MS = 5000.0

COUNTER_SCRIPT = Script(
    """
    local value = redis.call('INCRBY', KEYS[1], ARGV[1])
    return {value, redis.call('GET', KEYS[2])}
    """
)


async def test_a_thousand_concurrent_increments_over_two_connections(
    redis_server: RedisServer,
) -> None:
    async with open_redis(redis_server.url, pool_size=2, timeout_ms=SLOW_MS) as client:
        async with trio.open_nursery() as nursery:
            for _ in range(1000):
                nursery.start_soon(partial(client.execute, "INCR", "counter"))
        assert await client.execute("GET", "counter") == b"1000"
        statistics = client.statistics()
        assert statistics.connections == 2
        assert statistics.calls == 1001
        assert statistics.errors == 0
        assert statistics.pending == 0


async def test_concurrent_callers_each_get_their_own_reply(redis_server: RedisServer) -> None:
    replies: dict[int, bytes] = {}
    async with open_redis(redis_server.url, pool_size=3, timeout_ms=SLOW_MS) as client:

        async def echo(i: int) -> None:
            replies[i] = await client.execute("ECHO", f"caller {i}")

        async with trio.open_nursery() as nursery:
            for i in range(2000):
                nursery.start_soon(echo, i)
    assert replies == {i: f"caller {i}".encode() for i in range(2000)}


async def test_evalsha_loads_the_script_when_the_server_lacks_it(redis_server: RedisServer) -> None:
    async with open_redis(redis_server.url, timeout_ms=SLOW_MS) as client:
        await client.execute("SET", "label", "hello")
        # Never loaded: NOSCRIPT, then SCRIPT LOAD + EVALSHA in one round trip.
        assert await client.evalsha(COUNTER_SCRIPT, ["n", "label"], [2]) == [2, b"hello"]
        assert await client.evalsha(COUNTER_SCRIPT, ["n", "label"], [3]) == [5, b"hello"]
        assert await client.execute("SCRIPT", "FLUSH") == b"OK"
        assert await client.evalsha(COUNTER_SCRIPT, ["n", "label"], [1]) == [6, b"hello"]
        exists = await client.execute("SCRIPT", "EXISTS", COUNTER_SCRIPT.sha)
        assert exists == [1]
        # A handled NOSCRIPT is no failed call.
        assert client.statistics().errors == 0


async def test_error_replies_are_command_errors(redis_server: RedisServer) -> None:
    async with open_redis(redis_server.url, timeout_ms=SLOW_MS) as client:
        await client.execute("RPUSH", "a-list", "x")
        with pytest.raises(RedisCommandError) as caught:
            await client.execute("INCR", "a-list")
        assert caught.value.code == "WRONGTYPE"
        with pytest.raises(RedisCommandError) as caught:
            await client.evalsha(Script("return redis.call('NOPE')"), [], [])
        assert caught.value.code == "ERR"
        # The connection is fine afterwards.
        assert await client.execute("ECHO", "still here") == b"still here"
        assert client.statistics().errors == 2


async def test_a_timed_out_call_does_not_desynchronise_the_connection(
    redis_server: RedisServer,
) -> None:
    async with (
        open_redis(redis_server.url, pool_size=1, timeout_ms=50) as client,
        open_redis(redis_server.url, pool_size=1, timeout_ms=SLOW_MS) as admin,
    ):
        await client.ping(timeout_ms=SLOW_MS)
        await admin.ping()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(admin.execute, "DEBUG", "SLEEP", "0.3"))
            # Real time, as the server is real: let DEBUG SLEEP reach it first.
            await trio.sleep(0.05)
            started = trio.current_time()
            with pytest.raises(RedisTimeout) as caught:
                await client.execute("ECHO", "stale")
            elapsed = trio.current_time() - started
            assert 0.045 <= elapsed < 0.15
            assert "ECHO" in caught.value.message
            assert "50 ms" in caught.value.message
            # The stale reply arrives first on the same connection, and is dropped.
            assert await client.execute("ECHO", "fresh", timeout_ms=SLOW_MS) == b"fresh"
        statistics = client.statistics()
        assert statistics.connections == 1
        assert statistics.pending == 0
        assert statistics.errors == 1


async def test_a_killed_server_fails_calls_fast_and_a_restarted_one_is_used_again(
    redis_server: RedisServer,
) -> None:
    options = ClientOptions(timeout_ms=2000, pool_size=2, reconnect_max_ms=100)
    async with trio.open_nursery() as nursery:
        client = Redis(Address("127.0.0.1", redis_server.port), nursery, options=options)
        try:
            assert await client.execute("SET", "k", "v") == b"OK"
            redis_server.kill()
            for _ in range(3):
                started = trio.current_time()
                with pytest.raises(RedisUnavailable) as caught:
                    await client.execute("GET", "k")
                # Far below the 2 s timeout: a dead server is no slow server.
                assert trio.current_time() - started < 0.2
                assert not isinstance(caught.value, RedisTimeout)

            await trio.to_thread.run_sync(redis_server.start)
            with trio.fail_after(5):
                while True:
                    try:
                        assert await client.execute("SET", "k", "again") == b"OK"
                        break
                    except RedisUnavailable:
                        await trio.sleep(0.02)
            assert await client.execute("GET", "k") == b"again"
            statistics = client.statistics()
            assert statistics.reconnects >= 1
            assert statistics.errors >= 3
        finally:
            await client.aclose()


async def test_an_unreachable_server_fails_calls_not_the_opening() -> None:
    (port,) = free_ports(1)
    async with open_redis(f"redis://127.0.0.1:{port}", timeout_ms=SLOW_MS) as client:
        with trio.fail_after(1):
            with pytest.raises(RedisUnavailable) as caught:
                await client.ping()
        assert f"127.0.0.1:{port}" in caught.value.message
        assert caught.value.http_status == 503
        assert client.statistics().connections == 0


async def test_password_and_database_come_from_the_url(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory(password="s3cret pass")
    url = f"redis://:s3cret%20pass@127.0.0.1:{server.port}/3"
    async with open_redis(url, timeout_ms=SLOW_MS) as client:
        assert await client.execute("SET", "where", "db3") == b"OK"
        assert await client.execute("CLIENT", "INFO") is not None
    with server.client() as check:
        assert check.get("where") is None
        check.execute_command("SELECT", 3)
        assert check.get("where") == b"db3"


async def test_an_acl_user_from_the_url(redis_server: RedisServer) -> None:
    redis_server.execute("ACL", "SETUSER", "alice", "on", ">wonderland", "~*", "+@all")
    url = f"redis://alice:wonderland@127.0.0.1:{redis_server.port}/1"
    async with open_redis(url, timeout_ms=SLOW_MS) as client:
        assert await client.execute("ACL", "WHOAMI") == b"alice"
        assert await client.execute("SET", "k", "v") == b"OK"


async def test_a_wrong_password_is_unavailable_without_echoing_it(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory(password="right")
    async with open_redis(f"redis://:wrong-one@127.0.0.1:{server.port}") as client:
        with pytest.raises(RedisUnavailable) as caught:
            await client.execute("PING", timeout_ms=SLOW_MS)
    assert "authentication" in caught.value.message
    assert "wrong-one" not in caught.value.message


async def test_ping_statistics_and_close(redis_server: RedisServer) -> None:
    async with open_redis(redis_server.url, timeout_ms=SLOW_MS) as client:
        await client.ping()
        statistics = client.statistics()
        assert statistics.calls == 1
        assert statistics.connections >= 1
        await client.aclose()
        with pytest.raises(RedisUnavailable):
            await client.ping()
        assert client.statistics().connections == 0


async def test_tls_with_a_private_certificate_authority(
    redis_server_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    certificate, key = self_signed_certificate(tmp_path)
    (tls_port,) = free_ports(1)
    server = redis_server_factory(
        args=[
            "--tls-port",
            str(tls_port),
            "--tls-cert-file",
            str(certificate),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(certificate),
            "--tls-auth-clients",
            "no",
        ]
    )
    url = f"rediss://127.0.0.1:{tls_port}/2?ssl_ca_certs={certificate}"
    async with open_redis(url, timeout_ms=SLOW_MS) as client:
        assert await client.execute("SET", "secret", "kept") == b"OK"
        assert await client.evalsha(COUNTER_SCRIPT, ["n", "secret"], [1]) == [1, b"kept"]
    with server.client() as check:
        check.execute_command("SELECT", 2)
        assert check.get("secret") == b"kept"

    # Without the private CA the server's certificate is not trusted.
    async with open_redis(f"rediss://127.0.0.1:{tls_port}") as client:
        with pytest.raises(RedisUnavailable) as caught:
            await client.ping(timeout_ms=SLOW_MS)
        assert "CERTIFICATE_VERIFY_FAILED" in caught.value.message
    async with open_redis(f"rediss://127.0.0.1:{tls_port}?ssl_cert_reqs=none") as client:
        await client.ping(timeout_ms=SLOW_MS)
