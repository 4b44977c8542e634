"""The live forwarded connections of one role: ids, admission under the limit, drain, close-all.

Both roles keep one :class:`ConnectionRegistry`. It owns the set of live pumps (from accept to
both sides closed), the opens that are not pumps yet, the connection-id counter and the
``max_connections`` check; metrics observe it (:class:`ConnectionObserver`), they do not own it.

Capacity counts what holds a slot on the server:

* ``pending`` opens: the server waiting for a target whose listen backlog is full; they become
  connections, so a drain waits for them too.
* ``reserved`` slots: the client's readiness probe, a channel the server counts while it is
  open; it never becomes a connection, so a drain does not wait for it.
* live pumps; with ``count_closing=False`` (the server) a pump already closing (both
  directions ended or aborted, only flushing) no longer counts. The client counts them
  (``count_closing=True``): it frees a slot only after the server started closing its side,
  so with equal limits on both roles the server never refuses what the client admitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from container_desktop_relay.core.pump import Pump

__all__ = ["ConnectionObserver", "ConnectionRegistry"]


class ConnectionObserver(Protocol):
    """What the registry tells about each connection (metrics implement it)."""

    def connection_started(self, pump: Pump, forward: str, opened: bool) -> None:
        """``pump`` was accepted (by the client's forward ``forward`` when not empty); ``opened``:
        its target side is open already."""

    def connection_opened(self, pump: Pump) -> None:
        """The target side of a pump started with ``opened=False`` opened."""

    def connection_finished(self, pump: Pump, opened: bool) -> None:
        """``pump`` ended (both sides closed); ``opened``: its target side had opened."""


class ConnectionRegistry:
    """Live connections of one role and the slots they hold against ``limit``."""

    def __init__(self, limit: int, *, count_closing: bool, prefix: str = "c") -> None:
        self.limit = limit
        self.count_closing = count_closing
        #: every pump from accept until both its sides closed
        self.active: set[Pump] = set()
        #: opens that will become connections (counted against the limit, waited for by drain)
        self.pending = 0
        #: slots held by what never becomes a connection (the client's readiness probe)
        self.reserved = 0
        #: False once a drain began: no new connection is admitted
        self.admitting = True
        self.observers: list[ConnectionObserver] = []
        self._unopened: set[Pump] = set()
        self._ids = itertools.count(1)
        self._prefix = prefix
        self._idle: asyncio.Event | None = None

    # ------------------------------------------------------------ admission
    def new_id(self) -> str:
        """The next connection id of this role: ``c-1``, ``c-2``, ..."""
        return f"{self._prefix}-{next(self._ids)}"

    def in_use(self) -> int:
        """Slots held now: counted pumps, pending opens and reserved slots."""
        if self.count_closing:
            pumps = len(self.active)
        else:
            pumps = sum(1 for pump in self.active if not pump.closing)
        return pumps + self.pending + self.reserved

    def has_room(self) -> bool:
        """Whether one more connection fits under ``limit`` (and a drain has not begun)."""
        return self.admitting and self.in_use() < self.limit

    # ------------------------------------------------------------ connections
    def add(self, pump: Pump, forward: str = "", *, opened: bool = True) -> None:
        """Register an accepted connection (``opened``: its target side is open already;
        otherwise :meth:`opened` follows once it is)."""
        self.active.add(pump)
        if not opened:
            self._unopened.add(pump)
        for observer in self.observers:
            observer.connection_started(pump, forward, opened)

    def opened(self, pump: Pump) -> None:
        """The target side of a connection added with ``opened=False`` opened."""
        if pump in self._unopened:
            self._unopened.discard(pump)
            for observer in self.observers:
                observer.connection_opened(pump)

    def finished(self, pump: Pump) -> None:
        """A connection ended: forget it, tell the observers once, wake a drain."""
        if pump not in self.active:
            return
        self.active.discard(pump)
        opened = pump not in self._unopened
        self._unopened.discard(pump)
        for observer in self.observers:
            observer.connection_finished(pump, opened)
        self._wake()

    def begin_open(self) -> None:
        """An open that will become a connection started; it holds a slot until
        :meth:`end_open`."""
        self.pending += 1

    def end_open(self) -> None:
        """An open counted by :meth:`begin_open` is over (connected, failed or cancelled)."""
        self.pending -= 1
        self._wake()

    @contextlib.contextmanager
    def reserve(self) -> Iterator[None]:
        """Hold one slot for the duration of the block (for what never becomes a connection)."""
        self.reserved += 1
        try:
            yield
        finally:
            self.reserved -= 1

    # ------------------------------------------------------------ shutdown
    async def drain(self, timeout: float) -> int:
        """Stop admitting, then wait up to ``timeout`` seconds for the live connections and
        pending opens to end; returns how many connections remain."""
        self.admitting = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.active or self.pending:
                    self._idle = asyncio.Event()
                    await self._idle.wait()
        self._idle = None
        return len(self.active)

    def close_all(self, reason: str = "shutdown") -> None:
        """Stop admitting and abort every live connection now."""
        self.admitting = False
        for pump in list(self.active):
            pump.close(reason, abort=True)

    def _wake(self) -> None:
        if self._idle is not None and not self.active and not self.pending:
            self._idle.set()
