"""Forwarding core: moves bytes between two duplex ends with half-close, backpressure, accounting.

The pump is transport-blind. Each side of a forwarded connection is an adapter (an SSH
channel session, a Unix-socket protocol, a named-pipe protocol) that

* implements :class:`End` (``write``, ``write_eof``, ``finish``, ``pause_reading``,
  ``resume_reading``, ``close``, ``abort``) for the pump to drive, and
* reports its events to the pump: :meth:`Pump.data`, :meth:`Pump.eof`,
  :meth:`Pump.pause_writing`, :meth:`Pump.resume_writing`, :meth:`Pump.lost`.

Rules:

1. Data read from one side is written to the other at once. When the other side's outgoing
   buffer passes its high-water mark (``pause_writing``), the reading side is paused until it
   drains (``resume_writing``): memory per direction is bounded by the adapter's buffer limit.
2. Data that arrives before the other side is attached is held; once more than
   :data:`HOLD_LIMIT` is held its reader is paused, so at most that plus one read is buffered
   (a connection accepted before its SSH channel is open cannot grow memory, and a typical
   request, which fits, costs no pause and resume).
3. EOF from a side becomes ``write_eof`` on the other (half-close); the other direction keeps
   flowing. When both directions have seen EOF, both sides are closed (gracefully: buffered
   bytes are flushed first). A side that fails (reset, broken pipe, SSH link lost) or goes
   away before both directions ended (an SSH channel cut off by the peer relay) aborts the
   other, so a broken stream never looks like a clean end of stream.
4. The pump finishes when both attached sides have reported ``lost``; it then reports itself
   once to its ``on_finished`` callback with the byte counts and the close reason.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["CLIENT", "HOLD_LIMIT", "TARGET", "End", "Pump", "Side"]

#: Bytes a side may send before the other side is attached without its reader being paused.
HOLD_LIMIT = 16 * 1024


class Side(enum.IntEnum):
    """The two sides of a forwarded connection."""

    CLIENT = 0  # where the connection came from: local client, or the SSH channel on the server
    TARGET = 1  # where it goes: the SSH channel on the client, or the Unix socket on the server


CLIENT = Side.CLIENT
TARGET = Side.TARGET


class End(Protocol):
    """What the pump needs from one side of a forwarded connection."""

    def write(self, data: bytes) -> None:
        """Queue ``data`` for sending; never blocks."""

    def write_eof(self) -> None:
        """Half-close: no more data will be written."""

    def finish(self) -> None:
        """End of stream, then close after flushing (both directions are done)."""

    def pause_reading(self) -> None:
        """Stop delivering data until :meth:`resume_reading`."""

    def resume_reading(self) -> None:
        """Deliver data again."""

    def close(self) -> None:
        """Close after flushing what was written."""

    def abort(self) -> None:
        """Close at once, discarding buffered data."""


class Pump:
    """One forwarded connection: two ends, two directions, byte counts, one close reason."""

    __slots__ = (
        "_ends",
        "_eof",
        "_finished",
        "_held",
        "_held_size",
        "_lost",
        "_on_finished",
        "_paused_by",
        "_write_blocked",
        "bytes",
        "closing",
        "conn_id",
        "error",
        "last_activity",
        "reason",
        "started",
        "target",
    )

    def __init__(
        self,
        conn_id: str,
        target: str,
        on_finished: Callable[[Pump], None] | None = None,
    ) -> None:
        self.conn_id = conn_id
        self.target = target
        self._on_finished = on_finished
        self._ends: list[End | None] = [None, None]
        self._held: list[list[bytes]] = [[], []]
        self._held_size = [0, 0]
        self._eof = [False, False]
        self._lost = [False, False]
        self._paused_by = [False, False]  # side X paused because the other side is backed up
        self._write_blocked: list[float | None] = [None, None]
        #: bytes[CLIENT] = read from the client side (upstream, toward the target);
        #: bytes[TARGET] = read from the target side (downstream, toward the client).
        self.bytes = [0, 0]
        self.started = time.monotonic()
        self.last_activity = self.started
        self.closing = False
        self._finished = False
        self.reason = ""
        self.error: BaseException | None = None

    # ----------------------------------------------------------------- wiring
    def attach(self, side: Side, end: End) -> None:
        """Plug ``end`` in as ``side``; flushes data and EOF that the other side already sent."""
        self._ends[side] = end
        if self.closing:
            end.close()
            return
        other = 1 - side
        held = self._held[other]
        if held:
            self._held[other] = []
            self._held_size[other] = 0
            for chunk in held:
                end.write(chunk)
        if self._eof[other]:
            end.write_eof()
        other_end = self._ends[other]
        if other_end is not None and not self._lost[other]:
            other_end.resume_reading()
        if self._lost[other]:
            self._close_all("peer closed")

    @property
    def up(self) -> int:
        """Bytes that went from the client side toward the target."""
        return self.bytes[CLIENT]

    @property
    def down(self) -> int:
        """Bytes that went from the target side back to the client."""
        return self.bytes[TARGET]

    @property
    def duration(self) -> float:
        """Seconds since the pump was created."""
        return time.monotonic() - self.started

    def write_blocked_for(self, now: float) -> float:
        """How long the longest-blocked direction has been waiting for its reader."""
        blocked = [t for t in self._write_blocked if t is not None]
        return now - min(blocked) if blocked else 0.0

    # ------------------------------------------------------- adapter events
    def data(self, side: Side, data: bytes) -> None:
        """``side`` read ``data``."""
        self.bytes[side] += len(data)
        self.last_activity = time.monotonic()
        dest = self._ends[1 - side]
        if dest is None:
            self._held[side].append(bytes(data))
            self._held_size[side] += len(data)
            src = self._ends[side]
            if src is not None and self._held_size[side] > HOLD_LIMIT:
                src.pause_reading()
            return
        if self._lost[1 - side]:
            return
        dest.write(data)

    def eof(self, side: Side) -> None:
        """``side`` will send no more data."""
        if self._eof[side]:
            return
        self._eof[side] = True
        other = 1 - side
        dest = self._ends[other]
        live = dest is not None and not self._lost[other]
        if self._eof[other]:
            if live:
                dest.finish()  # EOF and close together (one send() on an SSH channel)
            self._close_all("done")
        elif live:
            dest.write_eof()

    def pause_writing(self, side: Side) -> None:
        """``side``'s outgoing buffer is full: stop reading from the other side."""
        self._write_blocked[side] = time.monotonic()
        other = 1 - side
        self._paused_by[other] = True
        src = self._ends[other]
        if src is not None and not self._lost[other]:
            src.pause_reading()

    def resume_writing(self, side: Side) -> None:
        """``side``'s outgoing buffer drained: read from the other side again."""
        self._write_blocked[side] = None
        other = 1 - side
        if not self._paused_by[other]:
            return
        self._paused_by[other] = False
        src = self._ends[other]
        if src is not None and not self._lost[other]:
            src.resume_reading()

    def lost(self, side: Side, exc: BaseException | None = None) -> None:
        """``side`` is closed (``exc`` says why when it failed)."""
        if self._lost[side]:
            return
        self._lost[side] = True
        self._write_blocked[side] = None
        if exc is not None and self.error is None:
            self.error = exc
            if not self.reason:
                self.reason = f"{'client' if side == CLIENT else 'target'} error: {exc}"
        if exc is not None:
            # A failed side is passed on as a failure (abort: a reset where the transport
            # can signal one), never as a clean end of stream.
            self.close(self.reason, abort=True)
            return
        if not self.closing:
            # Gone before both directions ended, and without our asking: the stream was cut
            # off (an SSH channel closed because the peer relay's client vanished or its
            # target failed, the SSH connection went away). Without EOF, a clean close would
            # make a truncated stream look complete; after its EOF, the other side would go
            # on producing data nobody can receive (and, not being read, block). Either way
            # it is passed on as a failure.
            who = "client" if side == CLIENT else "target"
            if not self.reason:
                self.reason = (f"{who} closed without end of stream" if not self._eof[side]
                               else f"{who} closed before the other direction ended")
            self.close(self.reason, abort=True)
            return
        self._maybe_finish()  # we were closing it: finished once every attached side is gone

    # ---------------------------------------------------------------- close
    def close(self, reason: str, *, abort: bool = False) -> None:
        """Close both sides (``abort`` discards buffered data) and record ``reason``."""
        if not self.reason:
            self.reason = reason
        if abort:
            self.closing = True
            for side in (CLIENT, TARGET):
                end = self._ends[side]
                if end is not None and not self._lost[side]:
                    end.abort()
            self._maybe_finish()
        else:
            self._close_all(reason)

    def _close_all(self, reason: str) -> None:
        if not self.reason:
            self.reason = reason
        if self.closing:
            self._maybe_finish()
            return
        self.closing = True
        for side in (CLIENT, TARGET):
            end = self._ends[side]
            if end is not None and not self._lost[side]:
                end.close()
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._finished:
            return
        for side in (CLIENT, TARGET):
            if self._ends[side] is not None and not self._lost[side]:
                return
        if not self.closing:
            return
        self._finished = True
        if self._on_finished is not None:
            self._on_finished(self)
