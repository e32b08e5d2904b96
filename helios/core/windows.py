"""Window lengths and window boundaries.

A window is either a fixed length in seconds, aligned to multiples of that
length from the Unix epoch, or a calendar unit (day, week, month, year) aligned
to real UTC calendar boundaries. Calendar weeks start on Monday (ISO 8601).
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta

from helios.errors import PolicyError

CALENDAR_UNITS = ("day", "week", "month", "year")

# The nominal length of each calendar unit, used where a calendar band needs a
# length (to compare bands, or for the `w=` of the RateLimit-Policy header).
_NOMINAL_SECONDS = {"day": 86_400, "week": 604_800, "month": 2_592_000, "year": 31_536_000}

_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_WORD_SECONDS = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86_400,
    "week": 604_800,
}
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")

# Longest window accepted: ten years. Anything longer is almost certainly a
# typo, and bounding it keeps window arithmetic well inside float precision.
MAX_WINDOW_SECONDS = 10 * 366 * 86_400
MIN_WINDOW_SECONDS = 0.001

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_window(
    value: object, *, calendar: bool, field: str = "window"
) -> tuple[float, str | None]:
    """Parse a window into ``(seconds, calendar_unit)``.

    ``field`` is the name used in error messages (for instance
    ``policies[0].window``); the error's ``field`` is always ``window``.

    Accepts a number of seconds, a duration such as ``"500ms"``, ``"10s"``,
    ``"1m"``, ``"1h"``, ``"1d"``, ``"1w"``, or the words ``second``, ``minute``,
    ``hour``, ``day``, ``week``, ``month``, ``year``. With ``calendar`` the
    window must be one of the calendar units.
    """
    if calendar:
        if value not in CALENDAR_UNITS:
            raise PolicyError(
                f"{field} must be one of day, week, month, year when calendar = true,"
                f" got {value!r}",
                field="window",
            )
        unit = str(value)
        return float(_NOMINAL_SECONDS[unit]), unit
    seconds = _window_seconds(value, field)
    if not MIN_WINDOW_SECONDS <= seconds <= MAX_WINDOW_SECONDS:
        raise PolicyError(
            f"{field} must be between 1ms and 10 years, got {value!r}", field="window"
        )
    return seconds, None


# A number of seconds written as text ("60", "0.5").
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def shown(value: object) -> str:
    """A value as an error message shows it: as JSON when it is JSON (``true``, ``null``)."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)


def _window_seconds(value: object, field: str) -> float:
    if isinstance(value, bool):
        raise PolicyError(f"{field} must be a duration, got {shown(value)}", field="window")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise PolicyError(f"{field} must be finite, got {shown(value)}", field="window")
        return float(value)
    if isinstance(value, str):
        if value in _WORD_SECONDS:
            return float(_WORD_SECONDS[value])
        if value in ("month", "year"):
            raise PolicyError(
                f"{field} {value!r} needs calendar = true (months and years vary in length)",
                field="window",
            )
        match = _DURATION.fullmatch(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        if _SECONDS.fullmatch(value):
            return float(value)
    raise PolicyError(
        f"{field} must be a number of seconds or a duration like '500ms', '10s', '1m',"
        f" '1h', '1d', '1w', got {shown(value)}",
        field="window",
    )


def format_window(seconds: float) -> str:
    """The shortest duration string for a window length (``60`` → ``"1m"``)."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def window_bounds(now: float, seconds: float, calendar: str | None) -> tuple[float, float]:
    """Return ``(start, end)`` of the window containing ``now`` (epoch seconds)."""
    if calendar is None:
        start = math.floor(now / seconds) * seconds
        return start, start + seconds
    return _calendar_bounds(now, calendar)


def _calendar_bounds(now: float, unit: str) -> tuple[float, float]:
    moment = datetime.fromtimestamp(now, tz=UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "day":
        start, end = day, day + timedelta(days=1)
    elif unit == "week":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    elif unit == "month":
        start = day.replace(day=1)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else (start.replace(month=start.month + 1))
        )
    else:
        start = day.replace(month=1, day=1)
        end = start.replace(year=start.year + 1)
    return (start - _EPOCH).total_seconds(), (end - _EPOCH).total_seconds()
