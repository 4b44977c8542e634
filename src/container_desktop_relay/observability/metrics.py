"""Live counters of one relay role: connections, bytes, errors, durations, last error.

Counting rules (documented in docs/observability.md):

* ``total_bytes_read``: bytes read from the client side of every forwarded connection (the
  local Docker client on the client role, the SSH channel on the server role), i.e. requests
  travelling toward the engine.
* ``total_bytes_written``: bytes written back to the client side, i.e. responses from the engine.
* Byte counts are bytes the receiving peer accepted, not bytes the relay read: what a timeout
  or an abort discarded from a buffer is not counted.
* ``connection_errors``: SSH-level failures (handshake/authentication failures, refused or
  failed channel opens, the SSH link dropping under live connections) and forwarded
  connections that did not end cleanly (timeouts, the close linger, aborts, cut-off streams).
* ``socket_errors``: local socket/pipe failures (the target socket unreachable, I/O errors on a
  forwarded socket).

Everything runs on one event loop, so plain integers are exact under any concurrency; byte
counts of live connections are summed at read time, so a scrape sees bytes as they move.
The live connections themselves belong to the role's
:class:`~container_desktop_relay.core.registry.ConnectionRegistry`: metrics observe it
(:meth:`Metrics.observe`) and read its live set, they do not own it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from container_desktop_relay.core.pump import Pump
    from container_desktop_relay.core.registry import ConnectionRegistry

__all__ = [
    "DURATION_BUCKETS",
    "OPEN_LATENCY_BUCKETS",
    "Metrics",
    "Snapshot",
    "account_finished",
]

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0)
OPEN_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
                        5.0)


@dataclass(slots=True)
class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics) kept as plain numbers."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        """Record one observation."""
        self.total += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound) pairs, ending with +Inf."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            running += n
            out.append((bound, running))
        out.append((float("inf"), self.count))
        return out


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A consistent copy of the counters at one instant."""

    role: str
    uptime: float
    total_connections: int
    active_connections: int
    total_bytes_read: int
    total_bytes_written: int
    total_errors: int
    connection_errors: int
    socket_errors: int
    average_connection_duration: float
    last_error: str
    last_error_time: float | None


class Metrics:
    """Counters of one role, fed by its connection registry (as an observer) and the
    SSH/endpoint layers."""

    def __init__(self, role: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.role = role
        self._clock = clock
        self.started = clock()
        #: the registry observed (see :meth:`observe`); None until a role attaches one
        self.registry: ConnectionRegistry | None = None
        self._live: Collection[Pump] = ()
        self.total_connections = 0
        self.closed_bytes_read = 0
        self.closed_bytes_written = 0
        self.closed_connections = 0
        self.closed_duration_total = 0.0
        self.connection_errors = 0
        self.socket_errors = 0
        self.other_errors = 0
        self.last_error = ""
        self.last_error_time: float | None = None
        self.recent_errors: deque[str] = deque(maxlen=20)
        self.duration_hist = Histogram(DURATION_BUCKETS)
        self.open_latency_hist = Histogram(OPEN_LATENCY_BUCKETS)
        self.channel_open_failures = 0
        #: client role: connections accepted per forward (its local endpoint URL)
        self.forward_connections: dict[str, int] = {}
        #: called after every finished connection (e.g. the idle memory trimmer)
        self.listeners: list[Callable[[], None]] = []

    # ---------------------------------------------------------------- feed
    def observe(self, registry: ConnectionRegistry) -> None:
        """Count the connections of ``registry`` and read its live ones at snapshot time."""
        self.registry = registry
        self._live = registry.active
        registry.observers.append(self)

    def connection_started(self, pump: Pump, forward: str, opened: bool) -> None:
        """A forwarded connection was accepted, by the client's forward ``forward`` when not
        empty (``opened``: and its target side opened; otherwise :meth:`connection_opened`
        follows once it is)."""
        if forward:
            self.forward_connections[forward] = self.forward_connections.get(forward, 0) + 1
        if opened:
            self.total_connections += 1

    def connection_opened(self, pump: Pump) -> None:
        """A connection started with ``opened=False`` reached its target side."""
        self.total_connections += 1

    def connection_finished(self, pump: Pump, opened: bool) -> None:
        """A forwarded connection ended (both sides closed).

        One that never reached its target (refused, or its client left while the channel
        opened) is not a connection: it counts in neither totals nor average duration.
        """
        if not opened:
            return
        self.closed_connections += 1
        up, down = pump.bytes
        self.closed_bytes_read += up
        self.closed_bytes_written += down
        duration = pump.duration
        self.closed_duration_total += duration
        self.duration_hist.observe(duration)
        for listener in self.listeners:
            listener()

    def channel_opened(self, latency: float) -> None:
        """An SSH channel to the target opened after ``latency`` seconds."""
        self.open_latency_hist.observe(latency)

    def error(self, kind: str, message: str) -> None:
        """Count an error of ``kind`` ("connection", "socket" or "other") and remember it."""
        if kind == "connection":
            self.connection_errors += 1
        elif kind == "socket":
            self.socket_errors += 1
        else:
            self.other_errors += 1
        self.last_error = message
        self.last_error_time = time.time()
        self.recent_errors.append(message)

    # ---------------------------------------------------------------- read
    @property
    def uptime(self) -> float:
        """Seconds since the role started."""
        return self._clock() - self.started

    def snapshot(self) -> Snapshot:
        """Counters now, including bytes of live connections."""
        live = self._live
        live_read = sum(p.bytes[0] for p in live)
        live_written = sum(p.bytes[1] for p in live)
        avg = (self.closed_duration_total / self.closed_connections
               if self.closed_connections else 0.0)
        return Snapshot(
            role=self.role,
            uptime=self.uptime,
            total_connections=self.total_connections,
            active_connections=len(live),
            total_bytes_read=self.closed_bytes_read + live_read,
            total_bytes_written=self.closed_bytes_written + live_written,
            total_errors=self.connection_errors + self.socket_errors + self.other_errors,
            connection_errors=self.connection_errors,
            socket_errors=self.socket_errors,
            average_connection_duration=avg,
            last_error=self.last_error,
            last_error_time=self.last_error_time,
        )


def account_finished(metrics: Metrics, pump: Pump, logger: logging.Logger,
                     forward: str = "") -> None:
    """Count the failure of a finished forwarded connection (the registry already reported
    the connection itself), and log its one close event (with the client's ``forward`` when
    given).

    A connection that did not end cleanly (a side failed, a timeout or the close linger cut it
    off, it was aborted at shutdown, its stream was cut off) is an error: ``socket_errors``
    when a local socket or pipe failed, ``connection_errors`` otherwise.
    """
    up, down = pump.bytes
    if pump.failed:
        kind = "socket" if isinstance(pump.error, OSError) else "connection"
        metrics.error(kind, f"{pump.conn_id}: {pump.reason}")
    if not logger.isEnabledFor(logging.INFO):  # per connection: skip building the fields
        return
    extra = {
        "conn_id": pump.conn_id,
        "socket_path": pump.target,
        "bytes_up": up,
        "bytes_down": down,
        "duration_ms": round(pump.duration * 1000, 3),
        "reason": pump.reason,
        "failed": pump.failed,
    }
    if forward:
        extra["endpoint"] = forward
    logger.log(logging.WARNING if pump.failed else logging.INFO, "connection_closed",
               extra=extra)
