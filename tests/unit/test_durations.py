"""Go-style durations."""

from __future__ import annotations

import pytest

from container_desktop_relay.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5), ("1m30s", 90), ("250ms", 0.25), ("1h", 3600), ("2", 2), (3, 3), ("1.5s", 1.5),
     ("1h2m3s", 3723), ("10us", 1e-5)],
)
def test_parse(text: str | int, seconds: float) -> None:
    """Go duration strings and plain numbers parse to seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "s", "5x", "1m30", "--1s", "1s2"])
def test_parse_rejects(text: str) -> None:
    """Malformed durations are rejected (a bare number is seconds, so "5" is fine)."""
    if text == "5":
        assert parse_duration(text) == 5
        return
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (5, "5s"), (90, "1m30s"), (5025, "1h23m45s"), (1.5, "1.5s"), (0.25, "250ms"),
     (3600, "1h0m0s"), (330, "5m30s")],
)
def test_format_like_go(seconds: float, text: str) -> None:
    """Formatting follows Go's time.Duration.String."""
    assert format_duration(seconds) == text
