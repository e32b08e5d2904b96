"""The control plane of a real ``helios --role all`` on its embedded file store.

An admin talks to the REST API with httpx; the gateway in the same process
must apply every change within a second. The etcd-backed fleet (separate
control and gateway processes) is in ``tests/store/test_fleet.py``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from e2e_support import (
    ADMIN_KEY,
    API_KEY,
    HeliosProcess,
    clean_environment,
    free_ports,
    helios_command,
    running_helios,
    within,
)

pytestmark = pytest.mark.slow

# A change must reach the gateway within this long.
APPLY_SECONDS = 1.0


def allow(helios: HeliosProcess, tenant: str, resource: str, key: str) -> httpx.Response:
    with helios.client() as client:
        return client.get(
            "/allow", params={"tenant": tenant, "resource": resource}, headers={"X-API-Key": key}
        )


def remaining(helios: HeliosProcess, tenant: str, resource: str) -> int:
    with helios.client() as client:
        response = client.get(
            f"/api/v1/quota/{tenant}", params={"resource": resource}, headers={"X-API-Key": API_KEY}
        )
    assert response.status_code == 200, response.text
    return int(response.json()["remaining"])


def limit_is(helios: HeliosProcess, limit: int) -> Callable[[], bool | None]:
    def probe() -> bool | None:
        with helios.client() as client:
            response = client.get(
                "/api/v1/quota/acme", params={"resource": "search"}, headers={"X-API-Key": API_KEY}
            )
        return True if response.json().get("limit") == limit else None

    return probe


def stored_entries(store_file: Path) -> object:
    """What the embedded store holds (its revision also moves with gateway registrations)."""
    return json.loads(store_file.read_text())["entries"]


def test_policies_keys_and_resets_through_the_control_plane(tmp_path: Path) -> None:
    store_file = tmp_path / "store.json"
    with running_helios(tmp_path, settings={"HELIOS_STORE_FILE": str(store_file)}) as helios:
        with helios.admin() as admin:
            assert admin.post("/v1/tenants", json={"name": "acme"}).status_code == 201
            assert admin.post("/v1/tenants", json={"name": "globex"}).status_code == 201
            put = admin.put(
                "/v1/tenants/acme/policies/search",
                json={"algorithm": "token_bucket", "limit": 10, "window": "1h"},
            )
            assert put.status_code == 201, put.text
            within(APPLY_SECONDS, limit_is(helios, 10))

            issued = admin.post("/v1/tenants/acme/keys", json={"description": "ci"})
            assert issued.status_code == 201, issued.text
            key = issued.json()["key"]
            key_id = issued.json()["id"]
            first = within(
                APPLY_SECONDS,
                lambda: (
                    r if (r := allow(helios, "acme", "search", key)).status_code == 200 else None
                ),
            )
            assert first.json()["remaining"] == 9
            for _ in range(6):
                assert allow(helios, "acme", "search", key).status_code == 200
            assert remaining(helios, "acme", "search") == 3

            # A key of acme used for globex.
            assert allow(helios, "globex", "search", key).status_code == 403

            # Raised to 20: 7 spent, 13 left. Lowered to 5: none left, not a refill.
            admin.put("/v1/tenants/acme/policies/search", json={"limit": 20, "window": "1h"})
            within(APPLY_SECONDS, limit_is(helios, 20))
            assert remaining(helios, "acme", "search") == 13
            admin.put("/v1/tenants/acme/policies/search", json={"limit": 5, "window": "1h"})
            within(APPLY_SECONDS, limit_is(helios, 5))
            denied = allow(helios, "acme", "search", key)
            assert denied.status_code == 429
            assert denied.json()["remaining"] == 0

            # A reset gives the bucket back.
            assert (
                admin.post("/v1/tenants/acme/reset", json={"resource": "search"}).status_code == 202
            )
            within(
                APPLY_SECONDS,
                lambda: True if remaining(helios, "acme", "search") == 5 else None,
            )

            # The gateway lists itself with the revision it applied.
            gateways = admin.get("/v1/gateways").json()["gateways"]
            assert len(gateways) == 1
            assert gateways[0]["mode"] == "fast"

            # Revoked: rejected within a second.
            assert admin.delete(f"/v1/tenants/acme/keys/{key_id}").status_code == 204
            within(
                APPLY_SECONDS,
                lambda: True if allow(helios, "acme", "search", key).status_code == 401 else None,
            )

        stored = store_file.read_text()
        assert key not in stored
        assert key[10:] not in stored
        assert key not in helios.log()
        assert ADMIN_KEY not in helios.log()


def test_a_rejected_change_writes_nothing(tmp_path: Path) -> None:
    store_file = tmp_path / "store.json"
    settings = {"HELIOS_STORE_FILE": str(store_file)}
    with running_helios(tmp_path, settings=settings) as helios, helios.admin() as admin:
        admin.post("/v1/tenants", json={"name": "acme"})
        before = stored_entries(store_file)
        cases = {
            "algorithm": {"algorithm": "leaky", "limit": 1, "window": "1s"},
            "window": {"limit": 1, "window": "soon"},
            "limit": {"limit": 0, "window": "1s"},
            "burst": {"limit": 5, "window": "1s", "burst": 0},
            "calendar": {"limit": 5, "window": "day", "calendar": True},
        }
        for field, body in cases.items():
            response = admin.put("/v1/tenants/acme/policies/search", json=body)
            assert response.status_code == 400, response.text
            assert response.json()["field"] == field
            assert field in response.json()["error"]
        without_key = httpx.post(
            f"{helios.control_url}/v1/tenants", json={"name": "x"}, timeout=5.0
        )
        assert without_key.status_code == 401
        assert stored_entries(store_file) == before


def test_the_embedded_store_keeps_everything_across_a_restart(tmp_path: Path) -> None:
    store_file = tmp_path / "store.json"
    settings = {"HELIOS_STORE_FILE": str(store_file)}
    with running_helios(tmp_path / "first", settings=settings) as helios, helios.admin() as admin:
        admin.post("/v1/tenants", json={"name": "acme"})
        admin.put("/v1/tenants/acme/policies/search", json={"limit": 3, "window": "1m"})
        key = admin.post("/v1/tenants/acme/keys", json={}).json()["key"]

    with running_helios(tmp_path / "second", settings=settings) as helios:
        response = allow(helios, "acme", "search", key)
        assert response.status_code == 200, response.text
        assert response.json()["limit"] == 3
        with helios.admin() as admin:
            assert [t["name"] for t in admin.get("/v1/tenants").json()["tenants"]] == ["acme"]


def test_a_corrupt_store_file_stops_start_up_and_is_kept(tmp_path: Path) -> None:
    store_file = tmp_path / "store.json"
    store_file.write_text('{"format": "helios-store", "entries": [')
    before = store_file.read_bytes()
    http_port, metrics_port = free_ports(2)
    result = subprocess.run(
        helios_command(
            "--role", "all", "--http-port", str(http_port), "--metrics-port", str(metrics_port)
        ),
        env=clean_environment(
            {"HELIOS_STORE_FILE": str(store_file), "HELIOS_ALLOWED_API_KEYS": API_KEY}
        ),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert str(store_file) in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()
    assert store_file.read_bytes() == before


def admin_command(helios: HeliosProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """``helios admin --url <its control plane> ARGS``, as an operator would run it."""
    return subprocess.run(
        helios_command("admin", "--url", helios.control_url, *args),
        env=clean_environment({"HELIOS_ADMIN_KEY": ADMIN_KEY}),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_tenant_under_a_tenant_pattern_is_reset_by_name_never_by_the_pattern(
    tmp_path: Path,
) -> None:
    with running_helios(tmp_path) as helios, helios.admin() as admin:
        assert admin.post("/v1/tenants", json={"name": "team-*"}).status_code == 201
        put = admin.put("/v1/tenants/team-*/policies/*", json={"limit": 2, "window": "1h"})
        assert put.status_code == 201, put.text

        def applied() -> bool | None:
            with helios.client() as client:
                response = client.get(
                    "/api/v1/quota/team-a", params={"resource": "x"}, headers={"X-API-Key": API_KEY}
                )
            return True if response.json().get("limit") == 2 else None

        within(APPLY_SECONDS, applied)
        statuses = [allow(helios, "team-a", "x", API_KEY).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]

        # A pattern is refused, saying why; nothing is reset.
        pattern = admin.post("/v1/tenants/team-*/reset")
        assert (pattern.status_code, pattern.json()["field"]) == (400, "tenant"), pattern.text
        every = admin.post("/v1/tenants/team-a/reset", json={"resource": "*"})
        assert (every.status_code, every.json()["field"]) == (400, "resource"), every.text
        refused = admin_command(helios, "reset", "team-*")
        assert refused.returncode == 1
        assert "not for the pattern 'team-*'" in refused.stderr
        assert allow(helios, "team-a", "x", API_KEY).status_code == 429

        # The tenant by name: its counters are back within a second.
        done = admin_command(helios, "reset", "team-a", "--resource", "x")
        assert done.returncode == 0, done.stderr
        assert "counters of tenant team-a, resource x" in done.stdout
        within(
            APPLY_SECONDS,
            lambda: True if allow(helios, "team-a", "x", API_KEY).status_code == 200 else None,
        )
        # Allowed once by the wait above.
        assert remaining(helios, "team-a", "x") == 1
