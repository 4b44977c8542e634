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
5. Progress, not fullness, is what counts. Every ``write`` returns what the side still has
   queued, so byte counts are bytes handed to the receiving peer, not bytes read (what an
   abort discards is not counted). :meth:`Pump.stalled_for` (the idle sweeper's write timeout
   and close linger) looks at each side's :meth:`End.backlog` and is the time since a peer
   with a backlog last took any of it: a reader at any steady rate is never stalled.
6. The close reason is ``done`` only when both directions ended and were flushed; an abort
   (timeout, failure, cut-off stream, shutdown) replaces it, and :attr:`Pump.failed` says so.
"""

from __future__ import annotations

import builtins
import enum
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["CLIENT", "HOLD_LIMIT", "REFUSE_LINGER", "TARGET", "End", "Pump", "Side"]

#: Bytes a side may send before the other side is attached without its reader being paused.
HOLD_LIMIT = 16 * 1024
#: How long a refused client may go on sending (read and dropped) before it is cut off.
REFUSE_LINGER = 1.0


class Side(enum.IntEnum):
    """The two sides of a forwarded connection."""

    CLIENT = 0  # where the connection came from: local client, or the SSH channel on the server
    TARGET = 1  # where it goes: the SSH channel on the client, or the Unix socket on the server


CLIENT = Side.CLIENT
TARGET = Side.TARGET


class End(Protocol):
    """What the pump needs from one side of a forwarded connection."""

    def write(self, data: bytes) -> int:
        """Queue ``data`` for sending; never blocks. Returns :meth:`queued` after queueing."""

    def queued(self) -> int:
        """Bytes written but still queued in the relay (not yet handed to the transport's
        peer: the kernel, or the SSH peer through its window); 0 once closed."""

    def backlog(self) -> int:
        """Bytes written that the peer has not read yet, as far as can be seen: :meth:`queued`
        plus what waits in a kernel send queue. Cheap enough for a periodic look only."""

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
        "_accepted",
        "_backlog",
        "_ends",
        "_eof",
        "_finished",
        "_held",
        "_held_size",
        "_lost",
                "_paused_by",
        "_progress",
        "_sealed",
        "_sent",
        "_taken",
        "closing",
        "conn_id",
        "error",
        "failed",
        "last_activity",
        "on_finished",
        "reason",
        "refused_at",
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
        self.on_finished = on_finished
        self._ends: list[End | None] = [None, None]
        self._held: list[list[bytes]] = [[], []]
        self._held_size = [0, 0]
        self._eof = [False, False]
        self._lost = [False, False]
        self._paused_by = [False, False]  # side X paused because the other side is backed up
        #: per side: bytes written to its end, bytes handed on to its peer (last known), the
        #: backlog last seen, when its peer last took bytes (or had nothing pending)
        self._sent = [0, 0]
        self._accepted = [0, 0]
        self._backlog = [0, 0]
        self._taken = [0, 0]  # bytes the peer had read at the last look (sent - backlog)
        self.started = time.monotonic()
        self._progress = [self.started, self.started]
        #: a side whose accounting is final (lost, or aborted: its buffer is discarded)
        self._sealed = [False, False]
        self.last_activity = self.started
        self.closing = False
        self._finished = False
        self.reason = ""
        #: True once the stream was cut off (failure, timeout, abort): never a clean end
        self.failed = False
        self.error: BaseException | None = None
        #: when :meth:`refuse` was called (None: not refused)
        self.refused_at: float | None = None

    # ----------------------------------------------------------------- wiring
    def attach(self, side: Side, end: End) -> None:
        """Plug ``end`` in as ``side``; flushes data and EOF that the other side already sent."""
        self._ends[side] = end
        if self.closing:
            end.close()
            return
        if self.refused_at is not None:
            if side == CLIENT:
                end.write_eof()
            else:
                end.close()
            return
        other = 1 - side
        held = self._held[other]
        if held:
            self._held[other] = []
            self._held_size[other] = 0
            for chunk in held:
                self._wrote(side, len(chunk), end.write(chunk))
        if self._eof[other]:
            end.write_eof()
        other_end = self._ends[other]
        if other_end is not None and not self._lost[other]:
            other_end.resume_reading()
        if self._lost[other]:
            self._close_all("peer closed")

    @property
    def up(self) -> int:
        """Bytes from the client side that the target side's peer accepted."""
        self._observe(TARGET)
        return self._accepted[TARGET]

    @property
    def down(self) -> int:
        """Bytes from the target side that the client side's peer accepted."""
        self._observe(CLIENT)
        return self._accepted[CLIENT]

    @property
    def bytes(self) -> tuple[int, int]:
        """(:attr:`up`, :attr:`down`): bytes accepted by the peer, per direction."""
        return self.up, self.down

    @property
    def duration(self) -> float:
        """Seconds since the pump was created."""
        return time.monotonic() - self.started

    def stalled_for(self, now: float) -> float:
        """How long the longest-stalled side's peer has taken nothing of its backlog."""
        stalled = 0.0
        for side in (CLIENT, TARGET):
            self._observe(side, now)
            if self._backlog[side] and not self._sealed[side]:
                stalled = max(stalled, now - self._progress[side])
        return stalled

    def _wrote(self, side: int, n: int, queued: int) -> None:
        """``n`` bytes were written to ``side``'s end, which still queues ``queued``."""
        sent = self._sent[side] = self._sent[side] + n
        if sent - queued > self._accepted[side]:
            self._accepted[side] = sent - queued

    def _observe(self, side: int, now: float | None = None) -> None:
        """Note how much of ``side``'s backlog its peer has taken, and when it last took any."""
        end = self._ends[side]
        if end is None or self._sealed[side]:
            return
        now = time.monotonic() if now is None else now
        sent = self._sent[side]
        self._wrote(side, 0, end.queued())
        backlog = end.backlog()
        if sent - backlog > self._taken[side]:
            self._taken[side] = sent - backlog
            self._progress[side] = now
            if now > self.last_activity:
                self.last_activity = now  # a peer taking bytes is activity too
        elif not backlog:
            self._progress[side] = now  # nothing pending: not stalled
        self._backlog[side] = backlog

    def _seal(self, side: int, *, observe: bool) -> None:
        if observe:
            self._observe(side)
        self._sealed[side] = True

    # ------------------------------------------------------- adapter events
    def data(self, side: Side, data: builtins.bytes) -> None:
        """``side`` read ``data``."""
        self.last_activity = time.monotonic()
        other = 1 - side
        dest = self._ends[other]
        if dest is None:
            if self.refused_at is not None:
                return  # refused: the rest of the request is read and dropped
            self._held[side].append(bytes(data))
            self._held_size[side] += len(data)
            src = self._ends[side]
            if src is not None and self._held_size[side] > HOLD_LIMIT:
                src.pause_reading()
            return
        if self._lost[other]:
            return
        self._wrote(other, len(data), dest.write(data))

    def eof(self, side: Side) -> None:
        """``side`` will send no more data."""
        if self._eof[side]:
            return
        self._eof[side] = True
        if self.refused_at is not None:
            self._close_all(self.reason)  # the refused client has said all it will
            return
        other = 1 - side
        dest = self._ends[other]
        live = dest if dest is not None and not self._lost[other] else None
        if self._eof[other]:
            if live is not None:
                live.finish()  # EOF and close together (one send() on an SSH channel)
            self._close_all("done")
        elif live is not None:
            live.write_eof()

    def pause_writing(self, side: Side) -> None:
        """``side``'s outgoing buffer is full: stop reading from the other side."""
        other = 1 - side
        self._paused_by[other] = True
        src = self._ends[other]
        if src is not None and not self._lost[other]:
            src.pause_reading()

    def resume_writing(self, side: Side) -> None:
        """``side``'s outgoing buffer drained: read from the other side again."""
        self._observe(side)
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
        # A graceful close we asked for flushed everything; otherwise the transport has
        # already discarded its buffer, and the last backlog seen is what was not accepted.
        self._seal(side, observe=exc is None and self.closing and not self.failed)
        self._lost[side] = True
        if exc is not None and self.error is None:
            self.error = exc
            self._fail(f"{'client' if side == CLIENT else 'target'} error: {exc}")
        if exc is not None:
            # A failed side is passed on as a failure (abort: a reset where the transport
            # can signal one), never as a clean end of stream.
            self.close(self.reason, abort=True)
            return
        if not self.closing and not any(self._sent) and not any(self._held_size) \
                and not any(self._eof):
            # Gone before a single byte moved either way (the client relay's readiness probe,
            # a client that connected and left): nothing was cut short, so nothing failed.
            self._close_all("closed before any data")
            return
        if not self.closing:
            # Gone before both directions ended, and without our asking: the stream was cut
            # off (an SSH channel closed because the peer relay's client vanished or its
            # target failed, the SSH connection went away). Without EOF, a clean close would
            # make a truncated stream look complete; after its EOF, the other side would go
            # on producing data nobody can receive (and, not being read, block). Either way
            # it is passed on as a failure.
            who = "client" if side == CLIENT else "target"
            self._fail(f"{who} closed without end of stream" if not self._eof[side]
                       else f"{who} closed before the other direction ended")
            self.close(self.reason, abort=True)
            return
        self._maybe_finish()  # we were closing it: finished once every attached side is gone

    # ---------------------------------------------------------------- close
    def refuse(self, reason: str) -> None:
        """Refuse a connection whose target side never opened: the same way whatever it sent.

        The client reads EOF at once (no answer will come); what it sends meanwhile is read and
        dropped until it half-closes or closes, or :data:`REFUSE_LINGER` passes (the idle
        sweeper then aborts it). Closing at once would reset a client whose request was not
        yet read, but give a clean EOF to one whose request was: a refusal's look would depend
        on its size.
        """
        if self.closing or self.refused_at is not None:
            return
        self._fail(reason)
        self.refused_at = time.monotonic()
        self._held = [[], []]
        self._held_size = [0, 0]
        end = self._ends[CLIENT]
        if self._eof[CLIENT] or self._lost[CLIENT]:
            self._close_all(reason)
        elif end is not None:
            end.write_eof()
            end.resume_reading()
        target = self._ends[TARGET]
        if target is not None and not self._lost[TARGET]:
            target.close()

    def _fail(self, reason: str) -> None:
        """Record the first failure; it replaces a graceful reason such as ``done``."""
        if not self.failed:
            self.failed = True
            self.reason = reason

    def close(self, reason: str, *, abort: bool = False) -> None:
        """Close both sides (``abort`` discards buffered data) and record ``reason``.

        An abort is a failure: its reason replaces a graceful one (a ``done`` connection whose
        peer then stopped reading ends as the timeout that cut it off, not as ``done``).
        """
        if abort:
            self._fail(reason)
            self.closing = True
            for side in (CLIENT, TARGET):
                end = self._ends[side]
                if end is not None and not self._lost[side]:
                    if not self._sealed[side]:
                        self._seal(side, observe=True)
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
        if self.on_finished is not None:
            self.on_finished(self)
