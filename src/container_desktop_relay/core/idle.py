"""Idle limits on forwarded connections: read_timeout (no bytes either way), write_timeout
(a peer that stops accepting bytes), and a bounded linger for closing connections whose peer
stopped reading. Each measures time without progress, never how long a transfer takes: a
peer that keeps accepting bytes at any rate is never cut off. One sweeper per role."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from container_desktop_relay.core.pump import REFUSE_LINGER, Pump
from container_desktop_relay.log import get_logger

__all__ = ["CLOSE_LINGER", "expired", "sweep_idle"]

#: A closing connection may wait this long for a peer that accepts no bytes at all, then is
#: aborted (a graceful close flushes first, and a peer that never reads would hold it
#: forever). A slow reader that keeps taking bytes may take as long as it needs.
CLOSE_LINGER = 10.0

log = get_logger(__name__)


def expired(pump: Pump, now: float, read_timeout: float, write_timeout: float,
            close_linger: float = CLOSE_LINGER) -> str | None:
    """Why ``pump`` has outlived an idle limit at ``now`` (None when it has not)."""
    if pump.refused_at is not None and not pump.closing:
        if now - pump.refused_at >= REFUSE_LINGER:
            return f"refused client still sending after {REFUSE_LINGER:g}s"
        return None
    stalled = pump.stalled_for(now)  # also notes progress made since the last look
    if pump.closing:
        if stalled >= close_linger:
            return f"peer accepted no data for {close_linger:g}s while closing"
        return None
    if read_timeout and now - pump.last_activity >= read_timeout:
        return f"idle for {read_timeout:g}s (read_timeout)"
    if write_timeout and stalled >= write_timeout:
        return f"peer accepted no data for {write_timeout:g}s (write_timeout)"
    return None


async def sweep_idle(
    active: Callable[[], Iterable[Pump]], read_timeout: float, write_timeout: float
) -> None:
    """Close connections that exceed ``read_timeout``/``write_timeout``; runs until cancelled.

    Checks every quarter of the shortest limit (at most once a second). Progress is noticed
    at the checks, so a peer that takes nothing is cut off between its limit and its limit
    plus two check intervals. Always runs: closing connections have a linger bound, refused
    ones :data:`~container_desktop_relay.core.pump.REFUSE_LINGER`.
    """
    limits = [t for t in (read_timeout, write_timeout, CLOSE_LINGER) if t > 0]
    interval = min(min(limits) / 4, 1.0)
    while True:
        await asyncio.sleep(interval)
        now = time.monotonic()
        for pump in list(active()):
            reason = expired(pump, now, read_timeout, write_timeout)
            if reason is not None:
                log.info("connection_timed_out", extra={"conn_id": pump.conn_id,
                                                        "reason": reason})
                pump.close(reason, abort=True)
