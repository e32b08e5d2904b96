"""A circuit breaker for a backend that may fail or hang.

How it works: while CLOSED, calls go through and consecutive failures are
counted; ``failure_threshold`` of them in a row OPEN the circuit. While OPEN,
calls fail fast without touching the backend, and a background prober (the
owner's task) asks the backend directly; once ``cooldown_seconds`` have passed
the circuit is HALF_OPEN: the next call goes through as a trial (a probe
counts too). A success in HALF_OPEN closes the circuit; a failure opens it
again for another cooldown.

Pure state: time is passed in, nothing here waits or does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class CircuitState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# (state, event) → next state. Events: "success", "failure", "threshold"
# (the failure count reached the threshold), "cooled" (the cooldown passed).
_TRANSITIONS: dict[tuple[CircuitState, str], CircuitState] = {
    (CircuitState.CLOSED, "success"): CircuitState.CLOSED,
    (CircuitState.CLOSED, "failure"): CircuitState.CLOSED,
    (CircuitState.CLOSED, "threshold"): CircuitState.OPEN,
    (CircuitState.OPEN, "cooled"): CircuitState.HALF_OPEN,
    (CircuitState.OPEN, "success"): CircuitState.CLOSED,
    (CircuitState.OPEN, "failure"): CircuitState.OPEN,
    (CircuitState.HALF_OPEN, "success"): CircuitState.CLOSED,
    (CircuitState.HALF_OPEN, "failure"): CircuitState.OPEN,
}


@dataclass(frozen=True, slots=True)
class BreakerStatistics:
    state: CircuitState
    consecutive_failures: int
    opened: int


class CircuitBreaker:
    """Tracks a backend's health; see the module docstring."""

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        cooldown_seconds: float = 1.0,
        on_change: Callable[[CircuitState], None] | None = None,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_seconds = cooldown_seconds
        # Told of every change of state (for logs); must not raise.
        self.on_change = on_change
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self.opened = 0
        self._opened_at = 0.0

    def _move(self, event: str) -> None:
        self._become(_TRANSITIONS[(self.state, event)])

    def _become(self, state: CircuitState) -> None:
        changed = state is not self.state
        self.state = state
        if changed and self.on_change is not None:
            self.on_change(state)

    def allows(self, now: float) -> bool:
        """Whether a call may try the backend now."""
        if self.state is CircuitState.OPEN and now - self._opened_at >= self.cooldown_seconds:
            self._move("cooled")
        return self.state is not CircuitState.OPEN

    def success(self) -> None:
        self.consecutive_failures = 0
        self._move("success")

    def failure(self, now: float) -> None:
        self.consecutive_failures += 1
        was_open = self.state is CircuitState.OPEN
        if self.state is CircuitState.CLOSED:
            if self.consecutive_failures >= self.failure_threshold:
                self._move("threshold")
        else:
            self._move("failure")
        if self.state is CircuitState.OPEN and not was_open:
            self.opened += 1
        if self.state is CircuitState.OPEN:
            self._opened_at = now

    def trip(self, now: float) -> None:
        """Open the circuit at once (the backend is known to be down)."""
        if self.state is not CircuitState.OPEN:
            self.opened += 1
        self._become(CircuitState.OPEN)
        self._opened_at = now

    def statistics(self) -> BreakerStatistics:
        return BreakerStatistics(self.state, self.consecutive_failures, self.opened)
