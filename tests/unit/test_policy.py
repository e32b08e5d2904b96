"""Policy documents: validation, and most-specific-first resolution."""

from __future__ import annotations

from typing import Any

import pytest
import trio.testing

from helios.core.policy import Policy, PolicySet, parse_policy
from helios.errors import NotFound, PolicyError
from helios.gateway.service import Check

from .support import API_KEY, make_gateway


def doc(tenant: str, resource: str, **fields: Any) -> dict[str, Any]:
    return {"tenant": tenant, "resource": resource, "limit": 10, "window": "1m", **fields}


def resolved(policies: PolicySet, tenant: str, resource: str) -> str | None:
    policy = policies.resolve(tenant, resource)
    return None if policy is None else policy.name


# Resolution.


def test_exact_tenant_beats_tenant_pattern() -> None:
    policies = PolicySet(
        parse_policy(d)
        for d in (doc("*", "search"), doc("ac*", "search"), doc("acme", "*"), doc("a*", "*"))
    )
    assert resolved(policies, "acme", "search") == "acme/*"
    assert resolved(policies, "acmeco", "search") == "ac*/search"
    assert resolved(policies, "abc", "search") == "a*/*"
    assert resolved(policies, "globex", "search") == "*/search"


def test_longer_tenant_prefix_beats_shorter() -> None:
    policies = PolicySet(parse_policy(d) for d in (doc("a*", "*"), doc("acm*", "*")))
    assert resolved(policies, "acme", "x") == "acm*/*"
    assert resolved(policies, "acm", "x") == "acm*/*"
    assert resolved(policies, "ac", "x") == "a*/*"


def test_exact_resource_beats_longer_prefix_beats_shorter() -> None:
    policies = PolicySet(
        parse_policy(d)
        for d in (
            doc("acme", "*"),
            doc("acme", "user:*"),
            doc("acme", "user:admin*"),
            doc("acme", "user:admin"),
        )
    )
    assert resolved(policies, "acme", "user:admin") == "acme/user:admin"
    assert resolved(policies, "acme", "user:admins") == "acme/user:admin*"
    assert resolved(policies, "acme", "user:42") == "acme/user:*"
    assert resolved(policies, "acme", "user:") == "acme/user:*"
    assert resolved(policies, "acme", "user") == "acme/*"


def test_falls_back_to_the_next_tenant_entry_when_no_resource_matches() -> None:
    policies = PolicySet(
        parse_policy(d) for d in (doc("acme", "search"), doc("ac*", "upload"), doc("*", "*"))
    )
    assert resolved(policies, "acme", "search") == "acme/search"
    assert resolved(policies, "acme", "upload") == "ac*/upload"
    assert resolved(policies, "acme", "other") == "*/*"


def test_star_alone_matches_everything() -> None:
    policies = PolicySet([parse_policy(doc("*", "*"))])
    for tenant, resource in [("a", "b"), ("日本", "ü"), ("x:y", "{z}/w"), ("*", "*")]:
        assert resolved(policies, tenant, resource) == "*/*"


def test_no_match_resolves_to_none() -> None:
    policies = PolicySet(parse_policy(d) for d in (doc("acme", "search"), doc("glo*", "*")))
    assert resolved(policies, "acme", "upload") is None
    assert resolved(policies, "acm", "search") is None
    assert resolved(policies, "gl", "x") is None


async def test_gateway_raises_not_found_naming_tenant_and_resource(
    mock_clock: trio.testing.MockClock,
) -> None:
    gateway = make_gateway(doc("acme", "search"))
    with pytest.raises(NotFound) as caught:
        gateway.allow(Check("acme", "upload", 1), API_KEY)
    assert caught.value.http_status == 404
    assert caught.value.message == "no policy matches tenant 'acme' and resource 'upload'"
    assert gateway.table.statistics().buckets == 0


def test_pattern_and_exact_names_of_one_tenant_are_distinct_policies() -> None:
    policies = PolicySet(parse_policy(d) for d in (doc("acme", "*"), doc("acme*", "*")))
    assert resolved(policies, "acme", "x") == "acme/*"
    assert resolved(policies, "acmeco", "x") == "acme*/*"


def test_duplicate_policy_is_rejected() -> None:
    with pytest.raises(PolicyError) as caught:
        PolicySet(parse_policy(d) for d in (doc("acme", "x"), doc("acme", "x")))
    assert "acme/x" in caught.value.message


# Validation.


def test_single_band_shorthand_and_defaults() -> None:
    policy = parse_policy(doc("acme", "demo"))
    assert isinstance(policy, Policy)
    assert policy.algorithm == "token_bucket"
    assert (policy.shadow, policy.failure_mode) == (False, "local")
    [band] = policy.bands
    assert (band.limit, band.window_seconds, band.burst, band.calendar) == (10, 60.0, 10, None)
    assert band.window_ns == 60_000_000_000


@pytest.mark.parametrize(
    ("window", "seconds"),
    [
        (1, 1.0),
        (0.5, 0.5),
        ("500ms", 0.5),
        ("10s", 10.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1d", 86_400.0),
        ("1w", 604_800.0),
        ("second", 1.0),
        ("minute", 60.0),
        ("hour", 3600.0),
    ],
)
def test_window_forms(window: object, seconds: float) -> None:
    assert parse_policy(doc("acme", "demo", window=window)).bands[0].window_seconds == seconds


@pytest.mark.parametrize(
    ("changes", "field", "text"),
    [
        ({"algorithm": "leaky_bucket"}, "algorithm", "leaky_bucket"),
        ({"limit": 0}, "limit", "limit"),
        ({"limit": -3}, "limit", "limit"),
        ({"limit": 1.5}, "limit", "limit"),
        ({"limit": True}, "limit", "limit"),
        ({"limit": "10"}, "limit", "limit"),
        ({"burst": 0}, "burst", "burst"),
        ({"algorithm": "fixed_window", "burst": 20}, "burst", "burst"),
        ({"algorithm": "sliding_window", "burst": 20}, "burst", "burst"),
        ({"window": "day", "calendar": True}, "calendar", "calendar"),
        (
            {"algorithm": "sliding_window", "window": "day", "calendar": True},
            "calendar",
            "calendar",
        ),
        ({"tenant": "ac*me"}, "tenant", "tenant"),
        ({"resource": "*x"}, "resource", "resource"),
        ({"resource": "a**"}, "resource", "resource"),
        ({"tenant": ""}, "tenant", "tenant"),
        ({"tenant": "a\nb"}, "tenant", "tenant"),
        ({"shadow": "yes"}, "shadow", "shadow"),
        ({"failure_mode": "panic"}, "failure_mode", "failure_mode"),
        ({"color": "red"}, "color", "color"),
        ({"bands": [{"limit": 1, "window": "1s"}]}, "bands", "bands"),
    ],
)
def test_invalid_policy_names_the_field(changes: dict[str, Any], field: str, text: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy({**doc("acme", "demo"), **changes})
    assert caught.value.field == field
    assert text in caught.value.message
    assert caught.value.http_status == 400


@pytest.mark.parametrize(
    "window",
    [
        "10x",
        "",
        "1 m",
        "-1s",
        0,
        0.0001,
        -5,
        float("inf"),
        float("nan"),
        True,
        "month",
        "year",
        11 * 366 * 86_400,
        None,
    ],
)
def test_bad_window_is_rejected_and_the_message_names_it(window: object) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(doc("acme", "demo", window=window))
    assert "policy.window" in caught.value.message
    assert caught.value.field is not None and caught.value.field.endswith("window")


@pytest.mark.parametrize(
    ("window", "ms"),
    [
        # The bounds themselves, in every form.
        (0.001, 1),
        ("0.001", 1),
        ("1ms", 1),
        ("0.001s", 1),
        (315_360_000, 315_360_000_000),
        (315_360_000.0, 315_360_000_000),
        ("315360000", 315_360_000_000),
        ("3650d", 315_360_000_000),
        ("87600h", 315_360_000_000),
        # Whole milliseconds however they are written; floats as written, not
        # as their binary value (0.007 is 7 ms, though 0.007 * 1000 is not 7).
        (0.007, 7),
        (1.5, 1500),
        ("1.5m", 90_000),
        ("0.25h", 900_000),
        ("315359999.999", 315_359_999_999),
    ],
)
def test_windows_in_whole_milliseconds_from_1ms_to_10_years(window: object, ms: int) -> None:
    [band] = parse_policy(doc("acme", "demo", window=window)).bands
    assert band.window_seconds == ms / 1000
    assert band.window_ns == ms * 1_000_000


@pytest.mark.parametrize(
    ("window", "message"),
    [
        (0.0015, "policy.window must be a whole number of milliseconds, got 0.0015"),
        ("0.0015", 'policy.window must be a whole number of milliseconds, got "0.0015"'),
        ("1.5ms", 'policy.window must be a whole number of milliseconds, got "1.5ms"'),
        ("1.0000000000000000000000000001s", "policy.window must be a whole number of"),
        (1.0001, "policy.window must be a whole number of milliseconds, got 1.0001"),
        (0.0009, "policy.window must be from 1ms to 10 years (315360000 seconds), got 0.0009"),
        ("0.9ms", 'policy.window must be from 1ms to 10 years (315360000 seconds), got "0.9ms"'),
        (
            315_360_000.001,
            "policy.window must be from 1ms to 10 years (315360000 seconds), got 315360000.001",
        ),
        (315_360_000.5, "policy.window must be from 1ms to 10 years"),
        ("3650.001d", "policy.window must be from 1ms to 10 years"),
        ("3651d", "policy.window must be from 1ms to 10 years"),
        (10 * 366 * 86_400, "policy.window must be from 1ms to 10 years"),
        (10**400, "policy.window must be from 1ms to 10 years"),
        ("1" * 33, "policy.window must be a number of seconds or a duration"),
    ],
)
def test_windows_out_of_bounds_or_between_milliseconds_are_refused(
    window: object, message: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(doc("acme", "demo", window=window))
    assert caught.value.field == "window"
    assert caught.value.message.startswith(message)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"algorithm": None}, "got null"),
        ({"algorithm": "leaky"}, 'got "leaky"'),
        ({"algorithm": ["token_bucket"]}, 'got ["token_bucket"]'),
        ({"shadow": "true"}, 'policy.shadow must be true or false, got "true"'),
        ({"failure_mode": False}, "got false"),
        ({"calendar": "yes"}, 'policy.calendar must be true or false, got "yes"'),
        ({"description": 1.5}, "policy.description must be a string, got 1.5"),
        ({"tenant": 5}, "policy.tenant must be a string, got 5"),
        ({"tenant": "a*b"}, "policy.tenant may hold '*' only at its end, got \"a*b\""),
        ({"window": "ü"}, 'got "ü"'),
        ({"window": "\ud800"}, 'got "\\ud800"'),
        ({"window": "x" * 500}, 'got "' + "x" * 98 + "…"),
        ({"window": "month"}, 'policy.window "month" needs calendar = true'),
        ({"window": "1m", "calendar": True, "algorithm": "fixed_window"}, 'got "1m"'),
    ],
)
def test_values_at_fault_are_shown_as_json(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy({**doc("acme", "demo"), **changes})
    assert message in caught.value.message


def test_bad_window_field_is_the_bare_name_like_other_fields() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(doc("acme", "demo", window="10x"))
    assert caught.value.field == "window"


def test_window_is_required() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy({"tenant": "acme", "resource": "demo", "limit": 10})
    assert caught.value.field == "window"


def test_errors_in_bands_name_the_band() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(
            {
                "tenant": "acme",
                "resource": "demo",
                "bands": [{"limit": 1, "window": "1s"}, {"limit": 0, "window": "1m"}],
            },
            where="policies[2]",
        )
    assert caught.value.field == "limit"
    assert caught.value.message.startswith("policies[2].bands[1].limit")


@pytest.mark.parametrize(
    "bands", [[], "3/s", [{"limit": 1, "window": "1s", "extra": 1}], [{"limit": 1}] * 9]
)
def test_bad_bands_are_rejected(bands: object) -> None:
    with pytest.raises(PolicyError):
        parse_policy({"tenant": "acme", "resource": "demo", "bands": bands})
