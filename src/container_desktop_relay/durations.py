"""Go-style durations: parse "1m30s"/"250ms"/plain seconds, format like Go's Duration.String."""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration"]

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str | int | float) -> float:
    """Return seconds for a Go duration string ("5s", "1m30s") or a number of seconds.

    Raises:
        ValueError: the text is neither a number nor a Go duration.
    """
    if isinstance(text, bool):
        raise ValueError("expected a duration, got a boolean")
    if isinstance(text, int | float):
        return float(text)
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    try:
        return float(s)
    except ValueError:
        pass
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    pos = 0
    total = 0.0
    for match in _PART.finditer(s):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(s) or pos == 0:
        raise ValueError(f"invalid duration {text!r}")
    return sign * total


def format_duration(seconds: float) -> str:
    """Format seconds like Go's time.Duration.String: "1h23m45s", "1.5s", "250ms", "0s"."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds == 0:
        return "0s"
    if seconds < 1:
        for unit, scale in (("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
            if seconds >= scale:
                return _trim(f"{seconds / scale:.3f}") + unit
        return "0s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    out = ""
    if hours:
        out += f"{int(hours)}h"
    if hours or minutes:
        out += f"{int(minutes)}m"
    return out + _trim(f"{secs:.3f}") + "s"


def _trim(number: str) -> str:
    return number.rstrip("0").rstrip(".") if "." in number else number
