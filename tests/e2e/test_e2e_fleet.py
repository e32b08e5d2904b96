"""A fleet on a real etcd: one ``helios --role control`` and two ``--role gateway``.

Every process is real and talks over loopback sockets; etcd is started by
the test on free ports and is killed, restarted and compacted under the
running gateways.
"""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from e2e_support import ADMIN_KEY, API_KEY, HeliosProcess, within
from etcd_servers import EtcdServer

pytestmark = pytest.mark.slow

APPLY_SECONDS = 1.0
PREFIX = "/fleet/"


class Fleet:
    def __init__(
        self, etcd: EtcdServer, control: HeliosProcess, gateways: list[HeliosProcess]
    ) -> None:
        self.etcd = etcd
        self.control = control
        self.gateways = gateways

    def admin(self) -> httpx.Client:
        return self.control.admin()


def quota(gateway: HeliosProcess, tenant: str, resource: str) -> dict[str, Any]:
    with gateway.client() as client:
        response = client.get(
            f"/api/v1/quota/{tenant}", params={"resource": resource}, headers={"X-API-Key": API_KEY}
        )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def allow(gateway: HeliosProcess, tenant: str, resource: str, key: str = API_KEY) -> httpx.Response:
    with gateway.client() as client:
        return client.get(
            "/allow", params={"tenant": tenant, "resource": resource}, headers={"X-API-Key": key}
        )


def limit_is(gateway: HeliosProcess, limit: int) -> Callable[[], bool | None]:
    def probe() -> bool | None:
        with gateway.client() as client:
            response = client.get(
                "/api/v1/quota/acme", params={"resource": "search"}, headers={"X-API-Key": API_KEY}
            )
        return True if response.json().get("limit") == limit else None

    return probe


def metric(gateway: HeliosProcess, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{gateway.metrics_url}/metrics", timeout=5.0).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


@pytest.fixture
def fleet(etcd_server: EtcdServer, helios_factory: Callable[..., HeliosProcess]) -> Iterator[Fleet]:
    settings = {
        "HELIOS_ETCD_ENDPOINTS": etcd_server.url,
        "HELIOS_STORE_PREFIX": PREFIX,
        "HELIOS_STORE_TIMEOUT_MS": "500",
        "HELIOS_STORE_LEASE_TTL_SECONDS": "2",
    }
    control = helios_factory(role="control", settings=settings)
    with control.admin() as admin:
        assert admin.post("/v1/tenants", json={"name": "acme"}).status_code == 201
        assert admin.post("/v1/tenants", json={"name": "globex"}).status_code == 201
        response = admin.put("/v1/tenants/acme/policies/search", json={"limit": 10, "window": "1h"})
        assert response.status_code == 201, response.text
    gateways = [helios_factory(role="gateway", settings=settings) for _ in range(2)]
    yield Fleet(etcd_server, control, gateways)


def test_a_policy_change_reaches_every_gateway_within_a_second_keeping_counters(
    fleet: Fleet,
) -> None:
    first, second = fleet.gateways
    for _ in range(7):
        assert allow(first, "acme", "search").status_code == 200
    assert quota(first, "acme", "search")["remaining"] == 3

    with fleet.admin() as admin:
        admin.put("/v1/tenants/acme/policies/search", json={"limit": 20, "window": "1h"})
        for gateway in fleet.gateways:
            within(APPLY_SECONDS, limit_is(gateway, 20))
        # Spent units carry over; the other gateway never spent any.
        assert quota(first, "acme", "search")["remaining"] == 13
        assert quota(second, "acme", "search")["remaining"] == 20

        admin.put("/v1/tenants/acme/policies/search", json={"limit": 5, "window": "1h"})
        for gateway in fleet.gateways:
            within(APPLY_SECONDS, limit_is(gateway, 5))
        assert quota(first, "acme", "search")["remaining"] == 0
        assert allow(first, "acme", "search").status_code == 429

        # Both gateways are registered, with the revision they applied.
        revision = fleet.etcd.revision()
        listed = within(
            3.0,
            lambda: (
                gateways
                if len(gateways := admin.get("/v1/gateways").json()["gateways"]) == 2
                and all(g["revision"] >= revision - 2 for g in gateways)
                else None
            ),
        )
        assert {g["mode"] for g in listed} == {"fast"}


def test_tenant_keys_work_on_every_gateway_and_revocation_applies_within_a_second(
    fleet: Fleet,
) -> None:
    with fleet.admin() as admin:
        issued = admin.post("/v1/tenants/acme/keys", json={}).json()
    key, key_id = issued["key"], issued["id"]
    for gateway in fleet.gateways:
        within(
            APPLY_SECONDS,
            lambda g=gateway: True if allow(g, "acme", "search", key).status_code == 200 else None,
        )
        assert allow(gateway, "globex", "search", key).status_code == 403

    # etcd holds the key's SHA-256, never the key.
    values = [
        base64.b64decode(kv["value"]).decode()
        for kv in fleet.etcd.call(
            "kv/range",
            {
                "key": base64.b64encode(PREFIX.encode()).decode(),
                "range_end": base64.b64encode(b"/fleet0").decode(),
            },
        ).get("kvs", [])
    ]
    assert values
    assert not any(key in value or key[12:] in value for value in values)

    with fleet.admin() as admin:
        assert admin.delete(f"/v1/tenants/acme/keys/{key_id}").status_code == 204
    for gateway in fleet.gateways:
        within(
            APPLY_SECONDS,
            lambda g=gateway: True if allow(g, "acme", "search", key).status_code == 401 else None,
        )


def test_gateways_keep_deciding_while_etcd_is_down_and_catch_up_after(fleet: Fleet) -> None:
    first, second = fleet.gateways
    fleet.etcd.kill()
    for gateway in fleet.gateways:
        assert allow(gateway, "acme", "search").status_code == 200
        with gateway.client() as client:
            ready = within(
                5.0,
                lambda c=client: r if "warnings" in (r := c.get("/ready")).json() else None,  # type: ignore[misc]
            )
        assert ready.status_code == 200
        assert "stale" in json.dumps(ready.json())
    assert metric(first, "helios_policies_stale") == 1

    fleet.etcd.restart()
    with fleet.admin() as admin:
        response = within(
            10.0,
            lambda: (
                r
                if (
                    r := admin.put(
                        "/v1/tenants/acme/policies/search", json={"limit": 30, "window": "1h"}
                    )
                ).status_code
                == 200
                else None
            ),
        )
    assert response.status_code == 200
    # The gateways retry with a backoff of at most two seconds.
    for gateway in fleet.gateways:
        within(APPLY_SECONDS + 2.5, limit_is(gateway, 30))
        with gateway.client() as client:
            assert "warnings" not in client.get("/ready").json()
    assert metric(second, "helios_policies_stale") == 0


def test_a_gateway_whose_history_was_compacted_loads_a_snapshot(fleet: Fleet) -> None:
    first, _ = fleet.gateways
    first.process.send_signal(signal.SIGSTOP)
    try:
        # While it is frozen, its watch connection dies, changes happen and
        # etcd forgets the history it would resume from.
        fleet.etcd.stop()
        fleet.etcd.restart()
        with fleet.admin() as admin:
            within(
                10.0,
                lambda: (
                    True
                    if admin.put(
                        "/v1/tenants/acme/policies/search", json={"limit": 40, "window": "1h"}
                    ).status_code
                    == 200
                    else None
                ),
            )
            admin.put("/v1/tenants/acme/policies/other", json={"limit": 1, "window": "1s"})
        fleet.etcd.compact()
    finally:
        first.process.send_signal(signal.SIGCONT)
    within(5.0, limit_is(first, 40))
    assert metric(first, "helios_store_errors_total", kind="compacted") >= 1
    assert metric(first, "helios_store_resyncs_total") >= 1


def test_a_put_with_an_if_match_that_is_no_longer_current_gets_409(fleet: Fleet) -> None:
    with fleet.admin() as admin:
        read = admin.get("/v1/tenants/acme/policies/search")
        etag = read.headers["ETag"]
        first = admin.put(
            "/v1/tenants/acme/policies/search",
            json={"limit": 11, "window": "1h"},
            headers={"If-Match": etag},
        )
        second = admin.put(
            "/v1/tenants/acme/policies/search",
            json={"limit": 12, "window": "1h"},
            headers={"If-Match": etag},
        )
        assert first.status_code == 200, first.text
        assert second.status_code == 409, second.text
        assert admin.get("/v1/tenants/acme/policies/search").json()["bands"][0]["limit"] == 11


async def _race(
    clients: list[httpx.AsyncClient], path: str, etag: str, limits: list[int]
) -> dict[int, httpx.Response]:
    """Each client PUTs the policy with one of ``limits`` and the same If-Match, at once."""
    answers: dict[int, httpx.Response] = {}
    ready: list[int] = []
    start = trio.Event()

    async def put(client: httpx.AsyncClient, limit: int) -> None:
        # Each racer has a connection of its own, open before the race starts.
        assert (await client.get("/health")).status_code == 200
        ready.append(limit)
        if len(ready) == len(clients):
            start.set()
        await start.wait()
        answers[limit] = await client.put(
            path, json={"limit": limit, "window": "1h"}, headers={"If-Match": etag}
        )

    async with trio.open_nursery() as nursery:
        for client, limit in zip(clients, limits, strict=True):
            nursery.start_soon(put, client, limit)
    return answers


async def test_admins_racing_on_one_policy_one_wins_each_round_the_others_get_409(
    fleet: Fleet,
) -> None:
    """Concurrent PUTs with the same If-Match: one wins, and etcd's compare-and-swap
    refuses the losers that passed the control plane's own check before it.

    Rounds go on (up to a bound) until etcd has refused at least one racer:
    with eight racers a round, nearly every round has one.
    """
    racers, rounds, most_rounds = 8, 5, 30
    path = "/v1/tenants/acme/policies/search"
    clients = [
        httpx.AsyncClient(
            base_url=fleet.control.control_url, headers={"X-API-Key": ADMIN_KEY}, timeout=10.0
        )
        for _ in range(racers)
    ]
    refused_by_etcd = 0
    done = 0
    try:
        while done < rounds or (not refused_by_etcd and done < most_rounds):
            done += 1
            etag = (await clients[0].get(path)).headers["ETag"]
            answers = await _race(clients, path, etag, [100 * done + i for i in range(racers)])

            statuses = sorted(answer.status_code for answer in answers.values())
            assert statuses == [200] + [409] * (racers - 1), [a.text for a in answers.values()]
            (limit,) = [limit for limit, answer in answers.items() if answer.status_code == 200]
            stored = await clients[0].get(path)
            assert stored.json()["bands"][0]["limit"] == limit
            assert stored.headers["ETag"] == answers[limit].headers["ETag"] != etag
            # A loser refused before the transaction is told the newer revision.
            refused_by_etcd += sum(
                "now at revision" not in answer.json()["error"]
                for answer in answers.values()
                if answer.status_code == 409
            )
    finally:
        for client in clients:
            await client.aclose()
    assert refused_by_etcd, f"in {done} rounds, no racer got as far as etcd's transaction"


def test_a_dead_gateway_disappears_when_its_lease_expires(fleet: Fleet) -> None:
    first, _ = fleet.gateways
    with fleet.admin() as admin:
        within(
            3.0, lambda: True if len(admin.get("/v1/gateways").json()["gateways"]) == 2 else None
        )
        first.kill()
        # The lease lasts two seconds in this fleet.
        within(
            6.0, lambda: True if len(admin.get("/v1/gateways").json()["gateways"]) == 1 else None
        )


def test_a_gateway_without_etcd_refuses_to_start(tmp_path: Path) -> None:
    """etcd configured but unreachable at start: a clear error, not a gateway without policies."""
    import subprocess

    from e2e_support import clean_environment, free_ports, helios_command

    (dead,) = free_ports(1)
    result = subprocess.run(
        helios_command("--role", "gateway", "--http-port", "0", "--metrics-port", "0"),
        env=clean_environment(
            {
                "HELIOS_ETCD_ENDPOINTS": f"http://127.0.0.1:{dead}",
                "HELIOS_STORE_TIMEOUT_MS": "300",
                "HELIOS_ALLOWED_API_KEYS": API_KEY,
            }
        ),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert "cannot load the policies from the store" in stderr
    assert "Traceback" not in stderr


def test_a_frozen_etcd_is_noticed_and_its_return_followed(fleet: Fleet) -> None:
    """A store that stops answering without closing anything (a broken network)."""
    first, _ = fleet.gateways
    fleet.etcd.pause()
    try:
        # The gateway probes the store every 3 s; a call may take 0.5 s here.
        with first.client() as client:
            ready = within(
                6.0,
                lambda: r if "warnings" in (r := client.get("/ready")).json() else None,  # type: ignore[misc]
            )
        assert ready.status_code == 200
        assert allow(first, "acme", "search").status_code == 200
    finally:
        fleet.etcd.resume()
    with fleet.admin() as admin:
        within(
            10.0,
            lambda: (
                True
                if admin.put(
                    "/v1/tenants/acme/policies/search", json={"limit": 50, "window": "1h"}
                ).status_code
                == 200
                else None
            ),
        )
    within(APPLY_SECONDS + 2.5, limit_is(first, 50))
