"""Idle limits: read_timeout, write_timeout and the close linger measure time without progress."""

from __future__ import annotations

import asyncio
import time

import pytest

from container_desktop_relay.core import idle
from container_desktop_relay.core.idle import expired
from container_desktop_relay.core.pump import CLIENT, REFUSE_LINGER, TARGET, Pump
from helpers import FakeEnd


def attached(*, holding: bool = True) -> tuple[Pump, FakeEnd, FakeEnd]:
    pump = Pump("c", "/s", None)
    a, b = FakeEnd(), FakeEnd()
    a.holding = b.holding = holding
    pump.attach(CLIENT, a)
    pump.attach(TARGET, b)
    return pump, a, b


def test_read_timeout() -> None:
    """No bytes for read_timeout expires the connection; activity resets the clock."""
    pump = Pump("c", "/s", None)
    now = time.monotonic()
    assert expired(pump, now + 0.5, 1.0, 0) is None
    assert "read_timeout" in (expired(pump, now + 1.5, 1.0, 0) or "")
    pump.last_activity = now + 1.4
    assert expired(pump, now + 1.5, 1.0, 0) is None


def test_read_timeout_counts_a_peer_taking_buffered_bytes_as_activity() -> None:
    """Nothing read for longer than read_timeout, but the client keeps taking the buffered
    answer: not idle."""
    pump, a, _b = attached()
    pump.data(TARGET, b"x" * 1000)
    now = time.monotonic()
    a.accept(100)
    assert expired(pump, now + 0.9, 1.0, 0) is None
    a.accept(100)
    assert expired(pump, now + 1.8, 1.0, 0) is None
    assert "read_timeout" in (expired(pump, now + 2.9, 1.0, 0) or "")


def test_write_timeout_measures_time_without_progress() -> None:
    """A backlog its peer keeps draining never expires, however long it lasts; a backlog the
    peer stops draining expires write_timeout after the last byte it accepted."""
    pump, _a, b = attached()
    now = time.monotonic()
    pump.data(CLIENT, b"u" * 10_000)
    for step in range(1, 10):  # 9 s of a slow, steady reader with a 2 s limit
        b.accept(1000)
        assert expired(pump, now + step, 0, 2.0) is None
    assert expired(pump, now + 10.5, 0, 2.0) is None
    assert "write_timeout" in (expired(pump, now + 11.1, 0, 2.0) or "")


def test_write_timeout_ignores_a_peer_with_nothing_pending() -> None:
    """write_timeout is about bytes waiting for the peer: with none queued it never fires."""
    pump, _a, _b = attached(holding=False)
    pump.data(CLIENT, b"u" * 10_000)
    assert expired(pump, time.monotonic() + 1e6, 0, 2.0) is None


def test_zero_disables_and_closing_only_lingers() -> None:
    """0 means no limit; a closing pump is reaped only when its peer stops accepting bytes,
    not because draining its buffer takes longer than the linger."""
    pump, a, _b = attached()
    assert expired(pump, time.monotonic() + 1e6, 0, 0) is None
    pump.data(TARGET, b"d" * 100_000)
    pump.eof(CLIENT)
    pump.eof(TARGET)
    assert pump.closing and pump.reason == "done"
    now = time.monotonic()
    for step in range(1, 30):  # a slow reader: 29 s to drain, linger 10 s
        a.accept(3000)
        assert expired(pump, now + step, 1, 1, close_linger=10) is None
    assert expired(pump, now + 38, 0, 0, close_linger=10) is None
    assert "while closing" in (expired(pump, now + 40, 0, 0, close_linger=10) or "")


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
    monkeypatch.setattr(time, "monotonic", lambda: 100.0)  # the pump stamps its times at 100
    pump = Pump("c", "/s", None)
    assert expired(pump, 100.999, 1.0, 0) is None
    assert expired(pump, 101.0, 1.0, 0) == "idle for 1s (read_timeout)"
    pump, _a, _b = attached()
    pump.data(CLIENT, b"u" * 100)  # a backlog the target peer does not take
    assert expired(pump, 101.999, 0, 2.0) is None
    assert expired(pump, 102.0, 0, 2.0) == "peer accepted no data for 2s (write_timeout)"
    pump.closing = True
    assert expired(pump, 109.999, 0, 0) is None
    assert expired(pump, 110.0, 0, 0) == "peer accepted no data for 10s while closing"


def test_refused_client_is_cut_off_after_the_refuse_linger(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused client still sending is aborted REFUSE_LINGER after the refusal (inclusive),
    whatever the other limits say; one that half-closed meanwhile is closing and lingers as
    any closing connection does."""
    monkeypatch.setattr(time, "monotonic", lambda: 100.0)  # refused at 100
    pump = Pump("c", "/s", None)
    a = FakeEnd()
    pump.attach(CLIENT, a)
    pump.data(CLIENT, b"request")
    pump.refuse("pool exhausted")
    linger = REFUSE_LINGER
    assert expired(pump, 100.0 + linger - 0.001, 0.5, 0.5) is None  # read_timeout not used
    assert expired(pump, 100.0 + linger, 0, 0) == f"refused client still sending after {linger:g}s"
    assert expired(pump, 100.0 + 1e6, 0, 0) == f"refused client still sending after {linger:g}s"
    pump.eof(CLIENT)  # the client said all it will: the pump closes it gracefully
    assert pump.closing
    assert expired(pump, 100.0 + 1e6, 0, 0) is None  # nothing queued for it: no linger


def test_sweeper_applies_the_write_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """One pass aborts a connection whose peer took nothing for write_timeout."""
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    pump, _a, b = attached()
    pump.data(CLIENT, b"u" * 100)  # a backlog the target peer does not take
    clock[0] = 200.0
    _sweep_once(monkeypatch, [pump], 0, 5.0)
    assert b.aborted and pump.reason == "peer accepted no data for 5s (write_timeout)"


def test_the_first_byte_taken_is_progress_on_either_side() -> None:
    """A peer that has taken a single byte of its backlog made progress: the write timeout
    counts from then."""
    for side in (CLIENT, TARGET):
        pump, a, b = attached()
        dest = b if side == CLIENT else a
        now = time.monotonic()
        pump.data(side, b"u" * 100)
        dest.accept(1)
        assert expired(pump, now + 1.5, 0, 2.0) is None
        assert expired(pump, now + 3.0, 0, 2.0) is None, side
        assert "write_timeout" in (expired(pump, now + 3.5, 0, 2.0) or "")


def test_a_backlog_is_stalled_from_when_none_was_last_seen() -> None:
    """With nothing pending a connection is never stalled, even for a sub-second limit; a
    backlog that then appears is stalled from the last look that saw none."""
    pump, _a, _b = attached()
    now = time.monotonic()
    assert pump.stalled_for(now + 5) == 0.0
    assert expired(pump, now + 5, 0, 0.5) is None
    pump.data(CLIENT, b"u" * 100)  # the target peer takes none of it
    assert expired(pump, now + 6, 0, 2.0) is None
    assert expired(pump, now + 7, 0, 2.0) == "peer accepted no data for 2s (write_timeout)"
