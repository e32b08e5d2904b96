"""What a sampled decision request's span says: tenant, resource, result, mode.

Every transport (HTTP, gRPC) sets :data:`DECISION_SPAN` while it answers a
sampled request, and calls the ``note_*`` functions once it has the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar

from opentelemetry.trace import Span

from helios.core.decision import Decision
from helios.errors import HeliosError
from helios.gateway.service import Check, Quota

# The span of the decision request being answered, when it is sampled. A
# variable of Helios's own: reading it is several times cheaper than asking
# OpenTelemetry for the current span, and the renderers read it on every request.
DECISION_SPAN: ContextVar[Span | None] = ContextVar("helios_decision_span", default=None)


def _result(decision: Decision) -> str:
    if decision.would_allow:
        return "allowed"
    return "shadow_denied" if decision.allowed else "denied"


def _worst(results: set[str]) -> str:
    """The worst of a batch's results: error, then denied, then shadow_denied."""
    return next(
        (r for r in ("error", "denied", "shadow_denied", "allowed") if r in results), "error"
    )


def note_decision(tenant: str, resource: str, decision: Decision) -> None:
    span = DECISION_SPAN.get()
    if span is not None:
        span.set_attributes(
            {
                "helios.tenant": tenant,
                "helios.resource": resource,
                "helios.result": _result(decision),
                "helios.mode": decision.mode,
                "helios.policy": decision.policy.name,
            }
        )


def note_descriptors(tenant: str, descriptors: int, over_limit: bool, mode: str) -> None:
    """Envoy's ShouldRateLimit: its domain (the tenant), its descriptors, the overall answer."""
    span = DECISION_SPAN.get()
    if span is not None:
        span.set_attributes(
            {
                "helios.tenant": tenant,
                "helios.descriptors": descriptors,
                "helios.result": "denied" if over_limit else "allowed",
                "helios.mode": mode,
            }
        )


def note_quota(quota: Quota) -> None:
    span = DECISION_SPAN.get()
    if span is not None:
        span.set_attributes(
            {
                "helios.tenant": quota.tenant,
                "helios.resource": quota.resource,
                "helios.mode": quota.decision.mode,
                "helios.policy": quota.decision.policy.name,
            }
        )


def note_batch(checks: list[Check | HeliosError], decisions: list[Decision | HeliosError]) -> None:
    """A batch's span: its size, the tenant and resource if all checks share them,
    and the result of the worst check (error, then denied, then shadow_denied)."""
    span = DECISION_SPAN.get()
    if span is None:
        return
    results = {_result(d) if isinstance(d, Decision) else "error" for d in decisions}
    if len(decisions) != len(checks):
        results.add("error")
    worst = _worst(results)
    attributes: dict[str, str | int] = {"helios.batch.size": len(checks), "helios.result": worst}
    valid = [check for check in checks if isinstance(check, Check)]
    tenants = {str(check.tenant) for check in valid}
    resources = {str(check.resource) for check in valid}
    if len(tenants) == 1:
        attributes["helios.tenant"] = tenants.pop()
    if len(resources) == 1:
        attributes["helios.resource"] = resources.pop()
    modes = {d.mode for d in decisions if isinstance(d, Decision)}
    if len(modes) == 1:
        attributes["helios.mode"] = modes.pop()
    span.set_attributes(attributes)


def note_outcomes(outcomes: Sequence[Decision | HeliosError]) -> None:
    """A batch's span when only its outcomes are at hand: its size and worst result."""
    span = DECISION_SPAN.get()
    if span is not None:
        results = {_result(d) if isinstance(d, Decision) else "error" for d in outcomes}
        span.set_attributes({"helios.batch.size": len(outcomes), "helios.result": _worst(results)})
