"""Idle limits: read_timeout and write_timeout decisions."""

from __future__ import annotations

import asyncio
import time

import pytest

from container_desktop_relay import idle
from container_desktop_relay.idle import expired
from container_desktop_relay.pump import TARGET, Pump
from helpers import FakeEnd


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


class _Stop(Exception):
    """Ends the sweeper after the iterations a test asked for."""


def _sweep_once(monkeypatch: pytest.MonkeyPatch, pumps: list[Pump], read: float,
                write: float) -> list[float]:
    """Run sweep_idle for exactly one pass over ``pumps``; return the sleeps it asked for."""
    sleeps: list[float] = []

    async def fake_sleep(delay: float) -> None:
        sleeps.append(delay)
        if len(sleeps) > 1:
            raise _Stop

    monkeypatch.setattr(idle.asyncio, "sleep", fake_sleep)
    with pytest.raises(_Stop):
        asyncio.run(idle.sweep_idle(lambda: pumps, read, write))
    return sleeps


@pytest.mark.parametrize(("read", "write", "interval"), [
    (2.0, 0, 0.5), (0, 0.4, 0.1), (0.4, 8.0, 0.1), (0, 0, 1.0), (60.0, 60.0, 1.0),
])
def test_sweeper_interval_is_a_quarter_of_the_shortest_limit(
        monkeypatch: pytest.MonkeyPatch, read: float, write: float, interval: float) -> None:
    """The sweeper wakes every quarter of the shortest limit (the close linger included,
    zero limits ignored), at most once a second."""
    assert _sweep_once(monkeypatch, [], read, write) == [interval, interval]


def test_sweeper_aborts_expired_connections_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """One pass aborts each expired connection with its reason and leaves the others."""
    stale, fresh = Pump("c-1", "/s"), Pump("c-2", "/s")
    a, b = FakeEnd(), FakeEnd()
    stale.attach(TARGET, a)
    fresh.attach(TARGET, b)
    stale.last_activity = time.monotonic() - 100
    fresh.last_activity = time.monotonic() + 100
    _sweep_once(monkeypatch, [stale, fresh], 5.0, 0)
    assert a.aborted and stale.reason == "idle for 5s (read_timeout)"
    assert not b.aborted and not b.closed and fresh.reason == ""


def test_expired_limits_are_inclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    """A limit is reached at exactly its length (>=), for reads, writes and the linger."""
    monkeypatch.setattr(time, "monotonic", lambda: 100.0)  # the pump stamps its pause at 100
    pump = Pump("c", "/s", None)
    assert expired(pump, 100.999, 1.0, 0) is None
    assert expired(pump, 101.0, 1.0, 0) == "idle for 1s (read_timeout)"
    pump.pause_writing(TARGET)
    assert expired(pump, 101.999, 0, 2.0) is None
    assert expired(pump, 102.0, 0, 2.0) == "peer accepted no data for 2s (write_timeout)"
    pump.closing = True
    assert expired(pump, 109.999, 0, 0) is None
    assert expired(pump, 110.0, 0, 0) == "peer accepted no data for 10s while closing"
