"""Liveness and readiness of the real process."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from e2e_support import HeliosProcess

import helios

pytestmark = pytest.mark.slow


def test_health_names_role_mode_and_version(helios_factory: Callable[..., HeliosProcess]) -> None:
    process = helios_factory()
    with process.client() as client:
        response = client.get("/health")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "status": "ok",
        "role": "all",
        "mode": "fast",
        "version": helios.__version__,
    }


def test_ready_when_policies_are_loaded_and_a_key_is_configured(
    helios_factory: Callable[..., HeliosProcess],
) -> None:
    process = helios_factory()
    with process.client() as client:
        response = client.get("/ready")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready"


def test_not_ready_without_any_api_key(helios_factory: Callable[..., HeliosProcess]) -> None:
    process = helios_factory(api_keys=None)
    with process.client() as client:
        ready = client.get("/ready")
        health = client.get("/health")
        decision = client.get("/allow?tenant=acme&resource=demo")
    assert ready.status_code == 503
    reasons = ready.json()["reasons"]
    assert isinstance(reasons, list)
    assert any("API key" in reason for reason in reasons), reasons
    # Alive all the same, and every decision is refused.
    assert health.status_code == 200
    assert decision.status_code == 401
    assert "HELIOS_ALLOWED_API_KEYS" in process.log()
