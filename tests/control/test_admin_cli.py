"""``helios admin`` against a real ControlHttpServer over a socket."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from control_support import ADMIN_KEY

from helios.cli import main
from helios.control.plane import ControlPlane
from helios.control.rest import ControlHttpServer, create_app
from helios.gateway.auth import KeyRing
from helios.store.kv import MemoryStore

POLICY_TOML = """\
algorithm = "fixed_window"
shadow = false
bands = [{ limit = 3, window = "1s" }, { limit = 100, window = "day", calendar = true }]
"""


@pytest.fixture
async def control(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, MemoryStore]]:
    """The URL of a control plane on a real socket (the admin key in the environment)."""
    store = MemoryStore()
    server = ControlHttpServer(create_app(ControlPlane(store), KeyRing([ADMIN_KEY])))
    monkeypatch.setenv("HELIOS_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.delenv("HELIOS_CONTROL_URL", raising=False)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve, "127.0.0.1", 0)
        yield f"http://{host}:{port}", store
        server.drain()
        await server.wait_closed()


async def admin(url: str, *args: str) -> int:
    """Run ``helios admin --url URL ARGS`` in a thread, as the console script would."""
    return await trio.to_thread.run_sync(functools.partial(main, ["admin", "--url", url, *args]))


async def test_tenants_and_a_policy_from_toml(
    control: tuple[str, MemoryStore], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = control
    assert await admin(url, "tenants", "create", "acme", "--description", "Acme Corp") == 0
    assert "created tenant acme" in capsys.readouterr().out
    assert await admin(url, "tenants", "create", "beta") == 0
    capsys.readouterr()

    assert await admin(url, "tenants", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "REVISION", "CREATED", "DESCRIPTION"]
    assert [line.split()[0] for line in lines[1:]] == ["acme", "beta"]

    policy = tmp_path / "search.toml"
    policy.write_text(POLICY_TOML)
    resource = "key1=value1/key2=value2"
    assert await admin(url, "policies", "put", "acme", resource, "--file", str(policy)) == 0
    out = capsys.readouterr().out
    assert f"created policy acme/{resource}" in out
    assert "3/1s, 100/day" in out
    assert await admin(url, "policies", "put", "acme", resource, "--file", str(policy)) == 0
    assert "replaced policy" in capsys.readouterr().out

    assert await admin(url, "--json", "policies", "show", "acme", resource) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["algorithm"] == "fixed_window"
    assert shown["bands"] == [
        {"limit": 3, "window": "1s"},
        {"limit": 100, "window": "day", "calendar": True},
    ]

    assert await admin(url, "--json", "tenants", "list") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [tenant["name"] for tenant in listed["tenants"]] == ["acme", "beta"]

    assert await admin(url, "policies", "list", "acme") == 0
    assert resource in capsys.readouterr().out
    assert await admin(url, "policies", "delete", "acme", resource) == 0
    assert await admin(url, "tenants", "delete", "beta") == 0
    capsys.readouterr()
    assert await admin(url, "tenants", "show", "beta") == 1
    assert "404: tenant 'beta' does not exist (field: tenant)" in capsys.readouterr().err


async def test_a_key_is_issued_once_and_revoked(
    control: tuple[str, MemoryStore], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = control
    await admin(url, "tenants", "create", "acme")
    capsys.readouterr()

    assert await admin(url, "keys", "issue", "acme", "--description", "billing") == 0
    captured = capsys.readouterr()
    assert "store this key now" in captured.err
    key = captured.out.splitlines()[-1]
    assert key.startswith("hk_")
    key_id = captured.out.split()[3]

    assert await admin(url, "keys", "list", "acme") == 0
    listing = capsys.readouterr().out
    assert key_id in listing
    assert key not in listing

    assert await admin(url, "keys", "revoke", "acme", key_id) == 0
    assert f"revoked API key {key_id}" in capsys.readouterr().out
    assert await admin(url, "--json", "keys", "list", "acme") == 0
    assert json.loads(capsys.readouterr().out) == {"keys": []}
    assert await admin(url, "keys", "revoke", "acme", key_id) == 1
    assert "404" in capsys.readouterr().err


async def test_gateways_and_reset(
    control: tuple[str, MemoryStore], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = control
    await admin(url, "tenants", "create", "acme")
    capsys.readouterr()
    assert await admin(url, "gateways") == 0
    assert capsys.readouterr().out.split() == [
        "ID",
        "ADDRESS",
        "MODE",
        "VERSION",
        "REVISION",
        "STARTED",
    ]
    assert await admin(url, "reset", "acme", "--resource", "search") == 0
    assert "counters of tenant acme, resource search" in capsys.readouterr().out
    assert await admin(url, "--json", "reset", "acme") == 0
    assert json.loads(capsys.readouterr().out)["resource"] is None


async def test_reset_of_a_tenant_under_a_pattern_and_not_of_the_pattern(
    control: tuple[str, MemoryStore], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = control
    await admin(url, "tenants", "create", "team-*")
    capsys.readouterr()
    assert await admin(url, "reset", "team-a", "--resource", "x") == 0
    assert "counters of tenant team-a, resource x" in capsys.readouterr().out
    assert await admin(url, "reset", "team-*") == 1
    assert "400: counters are reset for one tenant, not for the pattern 'team-*'" in (
        capsys.readouterr().err
    )
    assert await admin(url, "reset", "team-a", "--resource", "*") == 1
    assert "(field: resource)" in capsys.readouterr().err


async def test_if_match_makes_policy_and_tenant_writes_conditional(
    control: tuple[str, MemoryStore], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, store = control
    await admin(url, "tenants", "create", "acme")
    policy = tmp_path / "search.toml"
    policy.write_text(POLICY_TOML)
    put = ("policies", "put", "acme", "search", "--file", str(policy))
    capsys.readouterr()

    # 0: create it, only if there is none yet.
    assert await admin(url, *put, "--if-match", "0") == 0
    assert "created policy acme/search" in capsys.readouterr().out
    assert await admin(url, *put, "--if-match", "0") == 1
    assert "409: policy acme/search already exists" in capsys.readouterr().err

    assert await admin(url, "--json", "policies", "show", "acme", "search") == 0
    read = json.loads(capsys.readouterr().out)["revision"]
    # Someone else replaces it: a write at the revision read is refused, and changes nothing.
    assert await admin(url, *put) == 0
    capsys.readouterr()
    revision = store.revision
    assert await admin(url, *put, "--if-match", str(read)) == 1
    err = capsys.readouterr().err
    assert f"409: policy acme/search was changed by someone else (now at revision {revision})" in (
        err
    )
    assert "(field: revision)" in err
    assert await admin(url, "policies", "delete", "acme", "search", "--if-match", str(read)) == 1
    assert "409" in capsys.readouterr().err
    assert store.revision == revision

    # The current revision, also as the ETag the API sends ("14").
    assert await admin(url, "--json", *put, "--if-match", f'"{revision}"') == 0
    current = str(json.loads(capsys.readouterr().out)["revision"])
    assert await admin(url, "policies", "delete", "acme", "search", "--if-match", current) == 0
    assert "deleted policy acme/search" in capsys.readouterr().out

    assert await admin(url, "--json", "tenants", "show", "acme") == 0
    tenant = json.loads(capsys.readouterr().out)["revision"]
    update = ("tenants", "update", "acme", "--description", "Acme Corp")
    assert await admin(url, "--json", *update, "--if-match", str(tenant)) == 0
    updated = json.loads(capsys.readouterr().out)["revision"]
    assert await admin(url, *update, "--if-match", str(tenant)) == 1
    assert await admin(url, "tenants", "delete", "acme", "--if-match", str(tenant)) == 1
    assert "409: tenant 'acme' was changed by someone else" in capsys.readouterr().err
    assert await admin(url, "tenants", "delete", "acme", "--if-match", str(updated)) == 0
    assert "deleted tenant acme" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exited:
        main(["admin", "--url", url, *put, "--if-match", "latest"])
    assert exited.value.code == 2
    assert "--if-match: must be a revision such as 42, got 'latest'" in capsys.readouterr().err


async def test_errors_print_the_servers_message(
    control: tuple[str, MemoryStore], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, store = control
    await admin(url, "tenants", "create", "acme")
    capsys.readouterr()
    revision = store.revision
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"algorithm": "leaky_bucket", "limit": 1, "window": "1s"}))
    assert await admin(url, "policies", "put", "acme", "search", "--file", str(bad)) == 1
    err = capsys.readouterr().err
    assert "400" in err
    assert "leaky_bucket" in err
    assert "(field: algorithm)" in err
    assert store.revision == revision


async def test_wrong_keys_and_usage(
    control: tuple[str, MemoryStore],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _ = control
    monkeypatch.setenv("HELIOS_ADMIN_KEY", "not-the-key")
    assert await admin(url, "tenants", "list") == 1
    err = capsys.readouterr().err
    assert "401" in err
    assert "not-the-key" not in err

    key_file = tmp_path / "admin.key"
    key_file.write_text(ADMIN_KEY + "\n")
    assert await admin(url, "--key-file", str(key_file), "tenants", "list") == 0

    monkeypatch.delenv("HELIOS_ADMIN_KEY")
    assert await admin(url, "tenants", "list") == 2
    assert "HELIOS_ADMIN_KEY" in capsys.readouterr().err

    monkeypatch.setenv("HELIOS_ADMIN_KEY", ADMIN_KEY)
    not_a_policy = tmp_path / "policy.yaml"
    not_a_policy.write_text("limit: 1")
    assert await admin(url, "policies", "put", "acme", "x", "--file", str(not_a_policy)) == 2
    file_of_policies = tmp_path / "policies.toml"
    file_of_policies.write_text('[[policies]]\ntenant = "*"\nresource = "*"\nlimit = 1\n')
    assert await admin(url, "policies", "put", "acme", "x", "--file", str(file_of_policies)) == 2
    assert "top level" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        await admin(url, "tenants", "rename", "acme")
    assert exited.value.code == 2


def test_helios_help_points_at_admin(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "helios admin --help" in capsys.readouterr().out


async def test_dot_segments_stay_names_and_never_reach_another_tenant(
    control: tuple[str, MemoryStore], capsys: pytest.CaptureFixture[str]
) -> None:
    url, store = control
    for tenant in ("victim", "globex"):
        assert await admin(url, "tenants", "create", tenant) == 0
    capsys.readouterr()
    revision = store.revision
    # The server refuses such names; the command line must not turn them into
    # another path that the server would accept.
    assert await admin(url, "policies", "delete", "globex", "../../victim") == 1
    assert "'.' or '..'" in capsys.readouterr().err
    assert await admin(url, "tenants", "show", "..") == 1
    assert 'must not be ".."' in capsys.readouterr().err
    assert await admin(url, "policies", "show", "globex", ".") == 1
    assert store.revision == revision
    assert await admin(url, "tenants", "show", "victim") == 0


async def test_a_json_policy_file_that_gives_a_field_twice_is_refused(
    control: tuple[str, MemoryStore], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As the control plane refuses such a body: which of the two was meant?"""
    url, store = control
    await admin(url, "tenants", "create", "acme")
    capsys.readouterr()
    revision = store.revision
    twice = tmp_path / "twice.json"
    twice.write_text('{"limit": 1, "window": "1s", "limit": 2}')
    assert await admin(url, "policies", "put", "acme", "search", "--file", str(twice)) == 2
    assert f"{twice}: field 'limit' is given more than once" in capsys.readouterr().err
    assert store.revision == revision


async def test_an_empty_resource_is_refused_not_a_reset_of_everything(
    control: tuple[str, MemoryStore], capsys: pytest.CaptureFixture[str]
) -> None:
    url, store = control
    await admin(url, "tenants", "create", "globex")
    capsys.readouterr()
    revision = store.revision
    assert await admin(url, "reset", "globex", "--resource", "") == 1
    assert "400: resource must not be empty" in capsys.readouterr().err
    assert store.revision == revision
