"""Correctness fixes to asyncssh's flow control: bounded memory, close while paused, EOF kept.

Each is a :class:`~container_desktop_relay.ssh.patches.guard.Patch` (docs/architecture.md lists
them with their guards):

``window-credit``
    asyncssh re-opens the whole receive window when it delivers the first buffered packet
    after ``resume_reading()``, while up to a window's worth is still queued: every
    pause/resume cycle admits one more window. Credit is now granted only for bytes handed to
    the session, counted as they are queued (a running total, never a re-sum of the queue),
    and small packets queued while paused are coalesced, so a peer writing 1-byte packets
    into a 4 MiB window leaves a few dozen entries, not four million.
``congestion-pause``
    ``SSHConnection.pause_writing()`` is a no-op: when the SSH TCP socket backs up, channels
    keep writing until their windows are exhausted. A congested transport now pauses every
    channel's session until it drains; a channel opened meanwhile starts paused.
``close-drain``
    A channel closed by the peer while reading is paused never finishes closing (asyncssh
    waits for the session to take the buffered data), and a CLOSE arriving while an EOF waits
    behind paused data overwrote the pending EOF. Now what is buffered (at most one window) is
    delivered at once, then the EOF, and the close completes.
"""

from __future__ import annotations

from typing import Any

import asyncssh
from asyncssh import channel as _channel
from asyncssh import connection as _connection
from asyncssh.constants import MSG_CHANNEL_CLOSE, MSG_CHANNEL_WINDOW_ADJUST
from asyncssh.packet import UInt32

from container_desktop_relay.ssh.patches.guard import Patch, Target

#: Window credit returned per this many bytes consumed while data waits for a lagging reader
#: (the large packet size of the speed paths; sshtune.MAX_PACKET_SIZE).
LAG_CREDIT_STEP = 128 * 1024

__all__ = [
    "COALESCE_BELOW", "COALESCE_LIMIT", "FINGERPRINTS", "LAG_CREDIT_STEP", "PATCHES",
    "join_connection_pause",
]

#: Packets smaller than this, queued while a channel is paused, are merged into the entry
#: before them while it stays within :data:`COALESCE_LIMIT` bytes (bulk packets are queued
#: as they are: merging them would only add copies).
COALESCE_BELOW = 8 * 1024
COALESCE_LIMIT = 64 * 1024

_Channel = _channel.SSHChannel
_Connection = _connection.SSHConnection
_CLOSING = frozenset({"close_pending", "closed"})
# asyncssh's own functions, kept before anything is replaced
_ORIG_PROCESS_CLOSE = _Channel._process_close

#: Fingerprints of asyncssh 2.24.1's functions (guard.fingerprint; the same on 3.11 and 3.12).
FINGERPRINTS = {
    "SSHChannel._accept_data": "d27e5a21a308da76",
    "SSHChannel._deliver_data": "13ce1d6be9031f75",
    "SSHChannel._flush_recv_buf": "f47e627b21d60f3a",
    "SSHChannel._pause_resume_writing": "079bf18a22af80ba",
    "SSHChannel._process_close": "57f79893b43d4e52",
    "SSHChannel.pause_reading": "83985ca9466b5042",
    "SSHConnection.pause_writing": "b6fb05f18013fc4a",
    "SSHConnection.resume_writing": "b6fb05f18013fc4a",
}


# ----------------------------------------------------------------- window credit
def _grant_and_deliver(chan: Any, data: bytes, datatype: Any, queued: int) -> None:
    """Return window credit for what is no longer queued, then hand ``data`` to the session.

    Half a window at a time while the reader keeps up; every :data:`LAG_CREDIT_STEP` while it
    lags (data is queued), so the sender sees a slow reader's progress: its close linger and
    write timeout measure window credit, and a 2 MiB step took a 100 KiB/s reader for stalled.
    """
    outstanding = chan._recv_window + queued
    if outstanding < chan._init_recv_window / 2 or (
            queued and chan._init_recv_window - outstanding >= LAG_CREDIT_STEP):
        adjust = chan._init_recv_window - outstanding
        chan.send_packet(MSG_CHANNEL_WINDOW_ADJUST, UInt32(adjust))
        chan._recv_window += adjust
    if chan._encoding:
        try:
            decoded = chan._decoder.decode(data)
        except UnicodeDecodeError as exc:
            raise asyncssh.ProtocolError(str(exc)) from None
    else:
        decoded = data
    if chan._session is not None:
        chan._session.data_received(decoded, datatype)


def _deliver_data(self: Any, data: Any, datatype: Any) -> None:
    """SSHChannel._deliver_data, called by ``_flush_recv_buf`` with an entry it just dequeued."""
    queued = self._cdr_queued - len(data) if self._recv_buf else 0
    self._cdr_queued = queued
    if type(data) is bytearray:  # a coalesced chunk: sessions get bytes, as from asyncssh
        data = bytes(data)
    _grant_and_deliver(self, data, datatype, queued)


def _accept_data(self: Any, data: bytes, datatype: Any = None) -> None:
    """SSHChannel._accept_data that counts what it queues and coalesces small packets."""
    if not data or self._send_state in _CLOSING:
        return
    n = len(data)
    self._recv_window -= n
    if not self._recv_paused:
        _grant_and_deliver(self, data, datatype, self._cdr_queued if self._recv_buf else 0)
        return
    buf = self._recv_buf
    if not buf:
        self._cdr_queued = 0
    self._cdr_queued += n
    if buf and n < COALESCE_BELOW:
        last, last_type = buf[-1]
        if last_type == datatype and len(last) + n <= COALESCE_LIMIT:
            if type(last) is not bytearray:
                buf[-1] = (last := bytearray(last), datatype)
            last += data
            return
    buf.append((data, datatype))


# ------------------------------------------------------------------- close drain
def _process_close(self: Any, pkttype: int, pktid: int, packet: Any) -> None:
    """Peer closed the channel: deliver what is buffered, then its EOF, so the close finishes.

    Nothing more can come, so nothing is held back; the pump's linger bound deals with a
    target that never reads.
    """
    eof_pending = self._recv_state == "eof_pending"
    if self._recv_paused is True:
        self._recv_paused = False
    _ORIG_PROCESS_CLOSE(self, pkttype, pktid, packet)
    if eof_pending and not self._recv_buf and self._session is not None:
        self._session.eof_received()


def _pause_reading(self: Any) -> None:
    """Pause delivery, except after the peer closed (nothing more can come; drain instead)."""
    if self._recv_state == "close_pending":
        return
    self._recv_paused = True


# -------------------------------------------------------------- congestion pause
def _pause_resume_writing(self: Any) -> None:
    """Channel-level pause/resume that defers to a connection-level pause."""
    conn_paused = self._cdr_conn_paused
    if self._send_paused:
        if self._send_buf_len <= self._send_low_water:
            self._send_paused = False
            if not conn_paused and self._session is not None:
                self._session.resume_writing()
    elif self._send_buf_len > self._send_high_water:
        self._send_paused = True
        if not conn_paused and self._session is not None:
            self._session.pause_writing()


def _conn_pause_writing(self: Any) -> None:
    """The SSH TCP transport is congested: pause every channel's session."""
    self._cdr_write_paused = True
    for chan in list(self._channels.values()):
        if getattr(chan, "_cdr_conn_paused", False):
            continue
        chan._cdr_conn_paused = True
        if not chan._send_paused and chan._session is not None:
            chan._session.pause_writing()


def _conn_resume_writing(self: Any) -> None:
    """The SSH TCP transport drained: resume the sessions paused by :func:`_conn_pause_writing`."""
    self._cdr_write_paused = False
    for chan in list(self._channels.values()):
        if not getattr(chan, "_cdr_conn_paused", False):
            continue
        chan._cdr_conn_paused = False
        if not chan._send_paused and chan._session is not None:
            chan._session.resume_writing()


def join_connection_pause(chan: Any) -> None:
    """A channel opened while its connection's transport is congested starts paused too.

    Without ``congestion-pause`` no connection is ever marked congested: nothing happens.
    """
    if getattr(chan._conn, "_cdr_write_paused", False) and chan._session is not None:
        chan._cdr_conn_paused = True
        chan._session.pause_writing()


def _target(owner: Any, label: str, name: str, new: Any = None) -> Target:
    return Target(owner, name, label, FINGERPRINTS[label], new)


PATCHES = [
    Patch("window-credit", "correctness",
          "receive-window credit only for delivered bytes; queued packets counted, coalesced",
          [_target(_Channel, "SSHChannel._deliver_data", "_deliver_data", _deliver_data),
           _target(_Channel, "SSHChannel._accept_data", "_accept_data", _accept_data),
           _target(_Channel, "SSHChannel._flush_recv_buf", "_flush_recv_buf"),
           Target(_Channel, "_cdr_queued", "SSHChannel._cdr_queued", "", 0, added=True)]),
    Patch("congestion-pause", "correctness",
          "a congested SSH transport pauses every channel's writer until it drains",
          [_target(_Channel, "SSHChannel._pause_resume_writing", "_pause_resume_writing",
                   _pause_resume_writing),
           _target(_Connection, "SSHConnection.pause_writing", "pause_writing",
                   _conn_pause_writing),
           _target(_Connection, "SSHConnection.resume_writing", "resume_writing",
                   _conn_resume_writing),
           Target(_Channel, "_cdr_conn_paused", "SSHChannel._cdr_conn_paused", "", False,
                  added=True)]),
    Patch("close-drain", "correctness",
          "a close while paused delivers the buffered data and a pending EOF, then completes",
          [_target(_Channel, "SSHChannel._process_close", "_process_close", _process_close),
           Target(_Channel._packet_handlers, MSG_CHANNEL_CLOSE,
                  "SSHChannel._packet_handlers[CHANNEL_CLOSE]",
                  FINGERPRINTS["SSHChannel._process_close"], _process_close),
           _target(_Channel, "SSHChannel.pause_reading", "pause_reading", _pause_reading),
           _target(_Channel, "SSHChannel._flush_recv_buf", "_flush_recv_buf")]),
]
