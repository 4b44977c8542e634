"""Idle limits: read_timeout and write_timeout decisions."""

from __future__ import annotations

import time

from container_desktop_relay.idle import expired
from container_desktop_relay.pump import TARGET, Pump


def test_read_timeout() -> None:
    """No bytes for read_timeout expires the connection; activity resets the clock."""
    pump = Pump("c", "/s", None)
    now = time.monotonic()
    assert expired(pump, now + 0.5, 1.0, 0) is None
    assert "read_timeout" in (expired(pump, now + 1.5, 1.0, 0) or "")
    pump.last_activity = now + 1.4
    assert expired(pump, now + 1.5, 1.0, 0) is None


def test_write_timeout() -> None:
    """A side blocked for write_timeout expires; a resumed side does not."""
    pump = Pump("c", "/s", None)
    now = time.monotonic()
    pump.pause_writing(TARGET)
    assert expired(pump, now + 0.1, 0, 2.0) is None
    assert "write_timeout" in (expired(pump, now + 2.5, 0, 2.0) or "")
    pump.resume_writing(TARGET)
    assert expired(pump, now + 2.5, 0, 2.0) is None


def test_zero_disables_and_closing_only_lingers() -> None:
    """0 means no limit; a closing pump is reaped only when its peer stopped reading."""
    pump = Pump("c", "/s", None)
    assert expired(pump, time.monotonic() + 1e6, 0, 0) is None
    pump.closing = True
    assert expired(pump, time.monotonic() + 1e6, 1, 1) is None
    now = time.monotonic()
    pump.pause_writing(TARGET)
    assert expired(pump, now + 5, 0, 0, close_linger=10) is None
    assert "while closing" in (expired(pump, now + 11, 0, 0, close_linger=10) or "")
