"""The one place asyncssh is corrected: flow-control fixes, version-guarded.

asyncssh 2.24.1 has flow-control defects that break bounded memory whatever the speed
(see docs/performance.md and docs/reliability.md):

1. Window credit is returned on receipt, not on consumption: ``SSHChannel._deliver_data``
   re-opens the whole receive window when it delivers the first buffered packet after
   ``resume_reading()``, while up to a window's worth is still queued; every pause/resume
   cycle admits one more window. Fixed: credit only what was handed to the session.
2. ``SSHConnection.pause_writing()`` is a no-op: when the SSH TCP socket backs up, channels
   keep writing until their windows are exhausted. Fixed: a congested transport pauses every
   channel's session (which pauses the local reader through the pump) until it drains.

3. A channel closed by the peer while reading is paused never finishes closing: asyncssh
   waits for the session to take the buffered data first, so a stuck target would keep the
   channel (and its forwarded connection) forever. Fixed: once the peer has closed, what is
   buffered (at most one window) is delivered at once and the close completes; the pump's
   linger bound then deals with a target that never reads.

The pump already keeps data that arrives before a channel is open from growing memory (it
pauses the reader). :func:`apply` patches private methods, so it refuses any asyncssh version
other than the one it was written and tested against.
"""

from __future__ import annotations

from typing import Any

import asyncssh
from asyncssh import channel as _channel
from asyncssh import connection as _connection
from asyncssh.constants import MSG_CHANNEL_CLOSE, MSG_CHANNEL_WINDOW_ADJUST
from asyncssh.packet import UInt32

from container_desktop_relay.log import get_logger

__all__ = [
    "CHANNEL_WINDOW",
    "MAX_PACKET_SIZE",
    "SUPPORTED_ASYNCSSH",
    "TRANSPORT_HIGH_WATER",
    "apply",
    "cpu_has_aes",
    "is_applied",
    "preferred_ciphers",
    "tune_transport",
]

log = get_logger(__name__)

SUPPORTED_ASYNCSSH = "2.24.1"
CHANNEL_WINDOW = 2 * 1024 * 1024
MAX_PACKET_SIZE = 32 * 1024
TRANSPORT_HIGH_WATER = 1024 * 1024
TRANSPORT_LOW_WATER = 256 * 1024

_applied = False


def _deliver_data(self: Any, data: bytes, datatype: Any) -> None:
    """Deliver one packet; grant window credit only for bytes no longer queued."""
    queued = sum(len(d) for d, _ in self._recv_buf) if self._recv_buf else 0
    outstanding = self._recv_window + queued
    if outstanding < self._init_recv_window / 2:
        adjust = self._init_recv_window - outstanding
        self.send_packet(MSG_CHANNEL_WINDOW_ADJUST, UInt32(adjust))
        self._recv_window += adjust
    if self._encoding:
        try:
            decoded = self._decoder.decode(data)
        except UnicodeDecodeError as exc:
            raise asyncssh.ProtocolError(str(exc)) from None
    else:
        decoded = data
    if self._session is not None:
        self._session.data_received(decoded, datatype)


_orig_process_close = _channel.SSHChannel._process_close


def _process_close(self: Any, pkttype: int, pktid: int, packet: Any) -> None:
    """Peer closed the channel: stop holding buffered data back, so the close can finish."""
    if self._recv_paused is True:
        self._recv_paused = False
    _orig_process_close(self, pkttype, pktid, packet)


def _pause_reading(self: Any) -> None:
    """Pause delivery, except after the peer closed (nothing more can come; drain instead)."""
    if self._recv_state == "close_pending":
        return
    self._recv_paused = True


def _pause_resume_writing(self: Any) -> None:
    """Channel-level pause/resume that defers to a connection-level pause."""
    conn_paused = getattr(self, "_cdr_conn_paused", False)
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


def cpu_has_aes() -> bool:
    """Whether the CPU has AES instructions (Linux: /proc/cpuinfo; elsewhere assume x86-64 does)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return " aes" in line
    except OSError:
        pass
    return True


def preferred_ciphers() -> list[str]:
    """Cipher order: AES-GCM first where the CPU accelerates AES, else ChaCha20-Poly1305 first."""
    gcm = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
    chacha = ["chacha20-poly1305@openssh.com"]
    ctr = ["aes128-ctr", "aes192-ctr", "aes256-ctr"]
    return (gcm + chacha if cpu_has_aes() else chacha + gcm) + ctr


def is_applied() -> bool:
    """Whether the fixes are in place."""
    return _applied


def apply() -> bool:
    """Install the fixes once; returns False (and logs why) for an unsupported asyncssh."""
    global _applied
    if _applied:
        return True
    if asyncssh.__version__ != SUPPORTED_ASYNCSSH:
        log.warning(
            "asyncssh_fixes_not_applied",
            extra={"asyncssh": asyncssh.__version__, "supported": SUPPORTED_ASYNCSSH},
        )
        return False
    _channel.SSHChannel._deliver_data = _deliver_data  # type: ignore[method-assign]
    _channel.SSHChannel._pause_resume_writing = _pause_resume_writing  # type: ignore[method-assign]
    _channel.SSHChannel._process_close = _process_close  # type: ignore[method-assign]
    # packets are dispatched through a class-level table built from the original functions
    _channel.SSHChannel._packet_handlers[MSG_CHANNEL_CLOSE] = _process_close
    _channel.SSHChannel.pause_reading = _pause_reading  # type: ignore[method-assign]
    _connection.SSHConnection.pause_writing = _conn_pause_writing  # type: ignore[method-assign]
    _connection.SSHConnection.resume_writing = _conn_resume_writing  # type: ignore[method-assign]
    _applied = True
    return True


def tune_transport(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> None:
    """Give the SSH TCP transport the write-buffer limits the connection-level pause expects."""
    transport = getattr(conn, "_transport", None)
    if transport is not None:
        transport.set_write_buffer_limits(high=TRANSPORT_HIGH_WATER, low=TRANSPORT_LOW_WATER)
