"""Counter resets from the control plane in STRONG mode: the buckets in Redis go.

A real ``helios --role all`` decides in a real Redis (one server, then a
three-master cluster); the admin asks the control plane to reset a tenant's
counters for one resource, then for all; the tenant's keys leave Redis and its
buckets are full again, while another tenant's keys stay.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from urllib.parse import quote

import pytest
from e2e_support import API_KEY, HeliosProcess
from redis_servers import RedisClusterServers, RedisServer
from strong_support import GatewayFactory

pytestmark = pytest.mark.slow

POLICIES = """
[[policies]]
tenant = "*"
resource = "*"
algorithm = "fixed_window"
bands = [{ limit = 10, window = "1h" }, { limit = 100, window = "1d" }]
"""

# Names with characters Redis MATCH patterns treat specially.
TENANT = "ac?me[1]\\"
OTHER = "ac"


def spend(helios: HeliosProcess, tenant: str, resources: Iterable[str], times: int) -> None:
    with helios.client() as client:
        for resource in resources:
            for _ in range(times):
                response = client.get(
                    "/allow",
                    params={"tenant": tenant, "resource": resource},
                    headers={"X-API-Key": API_KEY},
                )
                assert response.status_code == 200, response.text
                assert response.json()["mode"] == "strong"


def remaining(helios: HeliosProcess, tenant: str, resource: str) -> int:
    with helios.client() as client:
        response = client.get(
            f"/api/v1/quota/{quote(tenant, safe='')}",
            params={"resource": resource},
            headers={"X-API-Key": API_KEY},
        )
    assert response.status_code == 200, response.text
    return int(response.json()["remaining"])


def eventually(seconds: float, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.02)


def reset(helios: HeliosProcess, tenant: str, resource: str | None = None) -> None:
    with helios.admin() as admin:
        if admin.get(f"/v1/tenants/{quote(tenant, safe='')}").status_code == 404:
            assert admin.post("/v1/tenants", json={"name": tenant}).status_code == 201
        body = {} if resource is None else {"resource": resource}
        response = admin.post(f"/v1/tenants/{quote(tenant, safe='')}/reset", json=body)
        assert response.status_code == 202, response.text


def redis_keys(servers: Iterable[RedisServer]) -> list[str]:
    keys: list[str] = []
    for server in servers:
        with server.client() as redis:
            keys.extend(key.decode() for key in redis.scan_iter("helios:*", count=1000))
    return keys


def tenant_keys(keys: list[str], tenant: str) -> list[str]:
    tag = f"{{{len(tenant)}:{tenant}"
    return [key for key in keys if tag in key]


def check_resets(helios: HeliosProcess, servers: list[RedisServer]) -> None:
    resources = [f"r{index}" for index in range(12)]
    spend(helios, TENANT, resources, 3)
    spend(helios, OTHER, ["?me[1]\\r0"], 3)
    keys = redis_keys(servers)
    # Two bands per bucket.
    assert len(tenant_keys(keys, TENANT)) == 2 * len(resources)
    assert len(tenant_keys(keys, OTHER)) == 2

    reset(helios, TENANT, "r0")
    eventually(2.0, lambda: remaining(helios, TENANT, "r0") == 10)
    assert remaining(helios, TENANT, "r1") == 7
    assert len(tenant_keys(redis_keys(servers), TENANT)) == 2 * (len(resources) - 1)

    reset(helios, TENANT)
    eventually(2.0, lambda: not tenant_keys(redis_keys(servers), TENANT))
    assert all(remaining(helios, TENANT, resource) == 10 for resource in resources)
    # The tenant whose name is a prefix of the other's keeps its counters.
    assert remaining(helios, OTHER, "?me[1]\\r0") == 7
    assert len(tenant_keys(redis_keys(servers), OTHER)) == 2


def test_a_reset_deletes_the_tenants_buckets_in_redis(
    gateway_factory: GatewayFactory, redis_server: RedisServer
) -> None:
    helios = gateway_factory(POLICIES, redis_url=redis_server.url)
    check_resets(helios, [redis_server])


def test_a_reset_reaches_every_master_of_a_cluster(
    gateway_factory: GatewayFactory, redis_cluster: RedisClusterServers
) -> None:
    helios = gateway_factory(
        POLICIES, redis_url=redis_cluster.url, settings={"HELIOS_REDIS_TIMEOUT_MS": "500"}
    )
    check_resets(helios, list(redis_cluster.nodes))
