"""Locust load test for the Helios gateway data plane (port 8080).

Simulated clients ask for decisions for a population of tenants whose popularity
follows a Zipf-like law (tenant of rank k is picked with weight 1 / k**s), over a few
resources, with costs from 1 to 5. A 429 is a correct answer from a rate limiter, so
it counts as a success; 5xx, connection errors and any other status count as failures.

Only point this at loopback or at test hosts you own and are allowed to load. The
script refuses any other host unless it is listed in HELIOS_LOADTEST_ALLOWED_HOSTS.

Run headless for a bounded time against a local gateway::

    pip install locust
    HELIOS_ALLOWED_API_KEYS=test-key \\
        helios --role all --policies loadtest/policies.toml &
    HELIOS_API_KEY=test-key locust -f loadtest/locustfile.py --headless \\
        --host http://127.0.0.1:8080 --users 50 --spawn-rate 10 --run-time 60s

Environment variables (all optional):

    HELIOS_API_KEY                 key sent as X-API-Key (default "test-key"); it must
                                   be a global key (HELIOS_ALLOWED_API_KEYS on the
                                   gateway) since it acts for every tenant
    HELIOS_LOADTEST_TENANTS        number of tenants (default 1000)
    HELIOS_LOADTEST_ZIPF_S         Zipf exponent s (default 1.1)
    HELIOS_LOADTEST_BATCH_SIZE     checks per batch call (default 10)
    HELIOS_LOADTEST_WAIT_MAX       longest pause between tasks in seconds (default 0.05)
    HELIOS_LOADTEST_VALIDATE       "1" to parse each decision and check that the JSON
                                   agrees with the status code (costs client CPU)
    HELIOS_LOADTEST_SEED           seed for reproducible tenant/resource sequences
    HELIOS_LOADTEST_ALLOWED_HOSTS  comma-separated extra host names you own

Locust itself becomes the bottleneck long before a lean gateway does; use
loadtest/allow.lua with wrk to measure peak throughput, and this file to exercise
realistic mixes, the batch and quota endpoints and correctness under load.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import logging
import os
import random
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlencode, urlsplit

from locust import FastHttpUser, between, events, task
from locust.exception import StopUser

if TYPE_CHECKING:
    from locust.contrib.fasthttp import ResponseContextManager
    from locust.env import Environment

log = logging.getLogger("helios.loadtest")


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    value = int(os.environ.get(name, default))
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


API_KEY: Final = os.environ.get("HELIOS_API_KEY", "test-key")
TENANT_COUNT: Final = _env_int("HELIOS_LOADTEST_TENANTS", 1000)
ZIPF_S: Final = float(os.environ.get("HELIOS_LOADTEST_ZIPF_S", "1.1"))
BATCH_SIZE: Final = _env_int("HELIOS_LOADTEST_BATCH_SIZE", 10)
WAIT_MAX: Final = float(os.environ.get("HELIOS_LOADTEST_WAIT_MAX", "0.05"))
VALIDATE: Final = os.environ.get("HELIOS_LOADTEST_VALIDATE", "") == "1"
EXTRA_ALLOWED_HOSTS: Final = frozenset(
    host.strip().lower()
    for host in os.environ.get("HELIOS_LOADTEST_ALLOWED_HOSTS", "").split(",")
    if host.strip()
)

MIN_COST: Final = 1
MAX_COST: Final = 5

# Resources and their relative popularity. loadtest/policies.toml gives each one a
# policy; costs stay well below every band's capacity so no request is a 400.
RESOURCES: Final[tuple[str, ...]] = ("api:read", "api:write", "search", "export")
RESOURCE_CUM_WEIGHTS: Final = tuple(itertools.accumulate((60.0, 25.0, 10.0, 5.0)))

# Tenants by rank: tenant-00001 is the most popular. Cumulative weights are computed
# once so every pick is a binary search (random.choices with cum_weights).
TENANTS: Final = tuple(f"tenant-{rank:05d}" for rank in range(1, TENANT_COUNT + 1))
TENANT_CUM_WEIGHTS: Final = tuple(
    itertools.accumulate(1.0 / rank**ZIPF_S for rank in range(1, TENANT_COUNT + 1))
)

DECISION_STATUSES: Final = frozenset({200, 429})
JSON_HEADERS: Final = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
KEY_HEADERS: Final = {"X-API-Key": API_KEY}

_seed = os.environ.get("HELIOS_LOADTEST_SEED")
_rng = random.Random(int(_seed)) if _seed is not None else random.Random()
_refused_host: str | None = None


def pick_tenant() -> str:
    return _rng.choices(TENANTS, cum_weights=TENANT_CUM_WEIGHTS, k=1)[0]


def pick_resource() -> str:
    return _rng.choices(RESOURCES, cum_weights=RESOURCE_CUM_WEIGHTS, k=1)[0]


def pick_cost() -> int:
    return _rng.randint(MIN_COST, MAX_COST)


def make_check() -> dict[str, Any]:
    return {"tenant": pick_tenant(), "resource": pick_resource(), "cost": pick_cost()}


def host_is_allowed(url: str | None) -> bool:
    """True for loopback addresses, ``localhost`` and explicitly allowed hosts."""
    if not url:
        return False
    hostname = (urlsplit(url).hostname or "").lower()
    if not hostname:
        return False
    if hostname == "localhost" or hostname in EXTRA_ALLOWED_HOSTS:
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _decision_error(status: int, decision: Any) -> str | None:
    """Why a decision object disagrees with its status code, or None if it agrees."""
    if not isinstance(decision, dict):
        return "decision is not a JSON object"
    allowed = decision.get("allowed")
    if not isinstance(allowed, bool):
        return "decision has no boolean 'allowed'"
    if allowed != (status == 200):
        return f"status {status} but allowed={allowed}"
    remaining = decision.get("remaining")
    if not isinstance(remaining, int) or remaining < 0:
        return f"bad 'remaining': {remaining!r}"
    return None


def _body_error(resp: ResponseContextManager, batch_size: int | None) -> str | None:
    """Validate a decision (``batch_size`` None) or a batch answer's JSON body."""
    try:
        body = json.loads(resp.content or b"")
    except ValueError:
        return "response body is not JSON"
    if batch_size is None:
        return _decision_error(resp.status_code, body)
    if not isinstance(body, dict):
        return "batch answer is not a JSON object"
    # The contract fixes "one decision each, in order" but not the key that holds
    # them; accept the usual names.
    decisions = next((body[key] for key in ("results", "decisions") if key in body), None)
    if decisions is None:
        return None
    if not isinstance(decisions, list) or len(decisions) != batch_size:
        return f"expected {batch_size} decisions"
    for decision in decisions:
        if not isinstance(decision, dict) or not isinstance(decision.get("allowed"), bool):
            return "a batch decision has no boolean 'allowed'"
    return None


def judge(
    resp: ResponseContextManager,
    expected: frozenset[int],
    *,
    batch_size: int | None = None,
    validate: bool = False,
) -> None:
    """Mark a response as success or failure in locust's statistics."""
    status = resp.status_code
    if status in expected:
        problem = _body_error(resp, batch_size) if validate else None
        if problem is None:
            resp.success()
        else:
            resp.failure(problem)
    elif not status:
        resp.failure(f"connection error: {getattr(resp, 'error', None)!r}")
    elif status >= 500:
        resp.failure(f"server error {status}")
    else:
        snippet = (resp.text or "")[:200]
        resp.failure(f"unexpected status {status}: {snippet}")


class HeliosUser(FastHttpUser):
    """One client of the gateway, issuing a weighted mix of decision calls."""

    host = "http://127.0.0.1:8080"
    wait_time = between(0.0, WAIT_MAX)
    connection_timeout = 5.0
    network_timeout = 10.0

    def on_start(self) -> None:
        global _refused_host
        if not host_is_allowed(self.host):
            if _refused_host is None:
                _refused_host = self.host
                log.error(
                    "refusing to load %s: only loopback hosts or hosts listed in "
                    "HELIOS_LOADTEST_ALLOWED_HOSTS may be targeted",
                    self.host,
                )
            raise StopUser()

    @task(10)
    def allow_get(self) -> None:
        query = urlencode(
            {"tenant": pick_tenant(), "resource": pick_resource(), "cost": pick_cost()}
        )
        with self.client.get(
            f"/allow?{query}",
            headers=KEY_HEADERS,
            name="/allow",
            catch_response=True,
        ) as resp:
            judge(resp, DECISION_STATUSES, validate=VALIDATE)

    @task(4)
    def allow_post(self) -> None:
        with self.client.post(
            "/api/v1/allow",
            json=make_check(),
            headers=JSON_HEADERS,
            name="/api/v1/allow",
            catch_response=True,
        ) as resp:
            judge(resp, DECISION_STATUSES, validate=VALIDATE)

    @task(1)
    def allow_batch(self) -> None:
        checks = [make_check() for _ in range(BATCH_SIZE)]
        with self.client.post(
            "/api/v1/allow/batch",
            json={"checks": checks},
            headers=JSON_HEADERS,
            name="/api/v1/allow/batch",
            catch_response=True,
        ) as resp:
            # A batch reports each decision in its body; the status of the whole call
            # may be 200 even when some checks are denied, or 429 when any is.
            judge(resp, DECISION_STATUSES, batch_size=BATCH_SIZE, validate=VALIDATE)

    @task(1)
    def quota(self) -> None:
        tenant = quote(pick_tenant(), safe="")
        query = urlencode({"resource": pick_resource()})
        with self.client.get(
            f"/api/v1/quota/{tenant}?{query}",
            headers=KEY_HEADERS,
            name="/api/v1/quota/[tenant]",
            catch_response=True,
        ) as resp:
            judge(resp, frozenset({200}))


@events.quitting.add_listener
def _fail_on_refused_host(environment: Environment, **_kwargs: Any) -> None:
    if _refused_host is not None:
        environment.process_exit_code = 2
