"""Feeding real Metrics through real Pumps with in-memory ends, for observability tests."""

from __future__ import annotations

from container_desktop_relay.metrics import Metrics
from container_desktop_relay.pump import CLIENT, TARGET, Pump


class Sink:
    """An in-memory end that accepts everything (the pump's End protocol)."""

    def write(self, data: bytes) -> None:
        pass

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class Clock:
    """A settable monotonic clock."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_connection(metrics: Metrics, up: int = 0, down: int = 0) -> Pump:
    """Start a forwarded connection on ``metrics`` that moved ``up``/``down`` bytes so far."""
    pump = Pump(f"c-{metrics.total_connections + 1}", "/t.sock", metrics.connection_finished)
    pump.attach(CLIENT, Sink())
    pump.attach(TARGET, Sink())
    metrics.connection_started(pump)
    if up:
        pump.data(CLIENT, b"u" * up)
    if down:
        pump.data(TARGET, b"d" * down)
    return pump


def finish(pump: Pump) -> None:
    """End ``pump`` (both sides lost), which reports it to its Metrics."""
    pump.lost(CLIENT)
    pump.lost(TARGET)
