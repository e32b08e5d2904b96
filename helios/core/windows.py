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
from fractions import Fraction

from helios.errors import PolicyError

CALENDAR_UNITS = ("day", "week", "month", "year")

# The nominal length of each calendar unit, used where a calendar band needs a
# length (to compare bands, or for the `w=` of the RateLimit-Policy header).
_NOMINAL_SECONDS = {"day": 86_400, "week": 604_800, "month": 2_592_000, "year": 31_536_000}

_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_WORD_SECONDS = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86_400,
    "week": 604_800,
}
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")

# Longest window accepted: ten years of 365 days (a calendar year's nominal
# length). Anything longer is almost certainly a typo, and bounding it keeps
# window arithmetic well inside float precision.
MAX_WINDOW_MS = 10 * _NOMINAL_SECONDS["year"] * 1000
# Shortest window. Windows are whole milliseconds: the API shows them so
# ("1500ms"), and the window shown must be the window enforced.
MIN_WINDOW_MS = 1

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
    window must be one of the calendar units. A window is a whole number of
    milliseconds from 1 ms to 10 years (:data:`MAX_WINDOW_MS`), bounds included.
    """
    if calendar:
        if value not in CALENDAR_UNITS:
            raise PolicyError(
                f"{field} must be one of day, week, month, year when calendar = true,"
                f" got {shown(value)}",
                field="window",
            )
        unit = str(value)
        return float(_NOMINAL_SECONDS[unit]), unit
    ms = _window_ms(value, field)
    if not MIN_WINDOW_MS <= ms <= MAX_WINDOW_MS:
        raise PolicyError(
            f"{field} must be from 1ms to 10 years ({MAX_WINDOW_MS // 1000} seconds),"
            f" got {shown(value)}",
            field="window",
        )
    if ms.denominator != 1:
        raise PolicyError(
            f"{field} must be a whole number of milliseconds, got {shown(value)}",
            field="window",
        )
    return int(ms) / 1000, None


# A number of seconds written as text ("60", "0.5").
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# Longer text is no window (and exact arithmetic on it would be slow).
_MAX_WINDOW_TEXT = 32
# How much of a value an error message shows.
_MAX_SHOWN = 100


def shown(value: object) -> str:
    """A value as an error message shows it: as JSON when it is JSON (``true``, ``null``).

    Text keeps its characters (``"ü"``, not ``"\\u00fc"``) unless it is not
    valid Unicode; a long value is cut short.
    """
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        text.encode()
    except UnicodeEncodeError:
        # A lone surrogate (possible in JSON's \u escapes) stays escaped: a
        # message is text.
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


def _window_ms(value: object, field: str) -> Fraction:
    """The window in milliseconds, exactly as written (0.0015 is 1.5 ms, not 2)."""
    if isinstance(value, bool):
        raise PolicyError(f"{field} must be a duration, got {shown(value)}", field="window")
    if isinstance(value, int):
        return Fraction(value * 1000)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PolicyError(f"{field} must be finite, got {shown(value)}", field="window")
        # The shortest text that reads back as this float: what was written.
        return Fraction(repr(value)) * 1000
    if isinstance(value, str) and len(value) <= _MAX_WINDOW_TEXT:
        if value in _WORD_SECONDS:
            return Fraction(_WORD_SECONDS[value] * 1000)
        if value in ("month", "year"):
            raise PolicyError(
                f"{field} {shown(value)} needs calendar = true (months and years vary in length)",
                field="window",
            )
        match = _DURATION.fullmatch(value)
        if match:
            return Fraction(match.group(1)) * _UNIT_MS[match.group(2)]
        if _SECONDS.fullmatch(value):
            return Fraction(value) * 1000
    raise PolicyError(
        f'{field} must be a number of seconds or a duration like "500ms", "10s", "1m",'
        f' "1h", "1d", "1w", got {shown(value)}',
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
