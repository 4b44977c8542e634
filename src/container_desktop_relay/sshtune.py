"""The one place asyncssh is corrected: flow-control and hot-path fixes, version-guarded.

Everything here patches private methods of asyncssh 2.24.1, so :func:`apply` refuses any other
version (pin it; re-measure and re-test on every upgrade). No patch changes the wire format:
tests/e2e/test_sshtune_interop.py runs the patched code against real OpenSSH both ways.

Flow control (correctness: bounded memory whatever the speed; docs/reliability.md):

1. Window credit is returned on receipt, not on consumption: ``SSHChannel._deliver_data``
   re-opens the whole receive window when it delivers the first buffered packet after
   ``resume_reading()``, while up to a window's worth is still queued; every pause/resume
   cycle admits one more window. Fixed: credit only what was handed to the session.
2. ``SSHConnection.pause_writing()`` is a no-op: when the SSH TCP socket backs up, channels
   keep writing until their windows are exhausted. Fixed: a congested transport pauses every
   channel's session (which pauses the local reader through the pump) until it drains;
   a channel opened meanwhile starts paused.
3. A channel closed by the peer while reading is paused never finishes closing: asyncssh
   waits for the session to take the buffered data first, so a stuck target would keep the
   channel (and its forwarded connection) forever. Fixed: once the peer has closed, what is
   buffered (at most one window) is delivered at once and the close completes; the pump's
   linger bound then deals with a target that never reads.

Hot path (speed; measured in docs/performance.md, bulk MB/s through ``ssh -L`` and our server):

4. No SSH_MSG_IGNORE before every packet with AEAD ciphers. asyncssh sends an empty IGNORE
   ahead of *every* packet once encrypting, doubling packets, cipher calls and ``send()``
   calls. That is a defence for CBC's predictable IV; AES-GCM and ChaCha20-Poly1305 have no
   such weakness. CBC and CTR keep asyncssh's behaviour unchanged.
5. Copy-free receive buffer. asyncssh keeps its input in ``bytes`` and re-slices it for every
   packet (``self._inpbuf = self._inpbuf[n:]`` copies everything still buffered, twice per
   packet). Here it is a ``bytearray`` consumed with ``del buf[:n]`` (O(1) at the front), the
   header is peeked in place, AES-GCM decrypts straight from a memoryview of the buffer, and
   CHANNEL_DATA for an open channel goes straight to ``_accept_data`` without ``SSHPacket``,
   the packet logger and the handler dispatch; channel open/confirmation/failure, window
   adjust, EOF and close go straight to the handler asyncssh would call (its checks before
   dispatch are all about key exchange and authentication, settled by then). Every other
   packet is handed, already decrypted, to asyncssh's own ``_recv_packet``.
6. Cheaper sending: padding comes from a pooled ``os.urandom`` block (each byte used once;
   no ``getrandom`` per packet), the ``AESGCM`` object is created once per key instead of per
   packet, channel writes keep the caller's ``bytes`` (no ``bytearray`` copy; large writes are
   split with memoryviews), and CHANNEL_DATA under AES-GCM is built with one ``join`` and
   encrypted with ``encrypt_into`` directly behind its length header (one copy instead of
   five).
7. Per-packet chores: ``SSHLogger.log`` converted every argument to text before the level
   check (asyncssh logs each channel open/close at info), packet logs were formatted even
   below debug level 3, and every ``data_received`` cancelled and re-created the keepalive
   timer. Now the level is checked first, packet logs are skipped below level 3, and the
   keepalive timer re-arms itself for the rest of the interval when input arrived meanwhile
   (same detection time). Together: -14% CPU per new connection.
8. Larger windows and packets (:data:`CHANNEL_WINDOW`, :data:`MAX_PACKET_SIZE`): with the
   patches above, 4 MiB / 128 KiB. 256 KiB packets are avoided: they exceed the Unix socket
   send buffer and measured slower. Both ends must create channels with the larger
   ``max_pktsize``: asyncssh accepts packets up to max(256 KiB, its channels' size + 1 KiB).

Channel lifecycle (speed: the docker CLI opens a connection per command; new-connection cost):

9. An accepted channel open always finished in a new task, one event-loop pass later, even
   when the owner answered with a ready session. Here a ready session is confirmed at once,
   in the call that received the open request (an awaitable one still gets asyncssh's task).
10. Opening a channel took two tasks and a chain of coroutines per connection (the caller's,
    and ``_start_reading``). :func:`open_unix_channel` sends the same CHANNEL_OPEN and runs
    a callback from the confirmation (or failure) itself; reading starts right after the
    session is attached, as asyncssh's task would have done.
11. Every packet was its own ``send()``. The EOF and CLOSE that end a forwarded connection
    now leave together (:class:`Corked`), as OpenSSH's output buffer sends them: one system
    call and one wake-up of the peer less per connection.

The pump already keeps data that arrives before a channel is open from growing memory (past
:data:`~container_desktop_relay.pump.HOLD_LIMIT` it pauses the reader).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import asyncssh
from asyncssh import channel as _channel
from asyncssh import connection as _connection
from asyncssh import packet as _packet
from asyncssh.constants import (
    MSG_CHANNEL_CLOSE,
    MSG_CHANNEL_DATA,
    MSG_CHANNEL_EOF,
    MSG_CHANNEL_EXTENDED_DATA,
    MSG_CHANNEL_OPEN,
    MSG_CHANNEL_OPEN_CONFIRMATION,
    MSG_CHANNEL_OPEN_FAILURE,
    MSG_CHANNEL_WINDOW_ADJUST,
    MSG_DEBUG,
    MSG_IGNORE,
    MSG_KEX_LAST,
    MSG_NEWKEYS,
    MSG_SERVICE_ACCEPT,
    MSG_SERVICE_REQUEST,
    MSG_USERAUTH_BANNER,
    MSG_USERAUTH_LAST,
)
from asyncssh.crypto import cipher as _cipher
from asyncssh.encryption import ChachaEncryption, GCMEncryption
from asyncssh.logging import SSHLogger
from asyncssh.misc import MACError, ProtocolError
from asyncssh.packet import Byte, PacketDecodeError, SSHPacket, String, UInt32
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from container_desktop_relay.log import get_logger

__all__ = [
    "CHANNEL_WINDOW",
    "MAX_PACKET_SIZE",
    "SUPPORTED_ASYNCSSH",
    "TRANSPORT_HIGH_WATER",
    "Corked",
    "OpenCallback",
    "apply",
    "cpu_has_aes",
    "is_applied",
    "open_unix_channel",
    "preferred_ciphers",
    "tune_transport",
]

log = get_logger(__name__)

SUPPORTED_ASYNCSSH = "2.24.1"
CHANNEL_WINDOW = 4 * 1024 * 1024
MAX_PACKET_SIZE = 128 * 1024
TRANSPORT_HIGH_WATER = 1024 * 1024
TRANSPORT_LOW_WATER = 256 * 1024

_AEAD = (GCMEncryption, ChachaEncryption)
_GCM_TAG = 16
_PAD_POOL = 64 * 1024
_EMPTY_STRING = String(b"")
_DATA_BYTE = Byte(MSG_CHANNEL_DATA)
#: Channel messages whose asyncssh handlers are synchronous and take the fast receive path.
_CONTROL_FAST = frozenset({MSG_CHANNEL_WINDOW_ADJUST, MSG_CHANNEL_EOF, MSG_CHANNEL_CLOSE})
#: ... and connection messages with synchronous handlers that take it too.
_FAST_DISPATCH = _CONTROL_FAST | {MSG_CHANNEL_OPEN, MSG_CHANNEL_OPEN_CONFIRMATION,
                                  MSG_CHANNEL_OPEN_FAILURE}
_PAD_BYTES = [Byte(n) for n in range(256)]
_DEFERRED_BEFORE_KEX = frozenset({MSG_DEBUG, MSG_SERVICE_REQUEST, MSG_SERVICE_ACCEPT})

_applied = False
_orig: dict[str, Any] = {}
_pad_pool = b""
_pad_off = 0
_tasks: set[asyncio.Task[None]] = set()


# --------------------------------------------------------------------- flow control
def _deliver_data(self: Any, data: bytes, datatype: Any) -> None:
    """Deliver one packet; grant window credit only for bytes no longer queued."""
    queued = sum(len(d) for d, _ in self._recv_buf) if self._recv_buf else 0
    outstanding = self._recv_window + queued
    # Half a window at a time while the reader keeps up; one packet at a time while it lags
    # (data is queued), so the sender sees a slow reader's progress (its close linger and
    # write timeout measure window credit) at least once per MAX_PACKET_SIZE consumed.
    if outstanding < self._init_recv_window / 2 or (
            queued and self._init_recv_window - outstanding >= MAX_PACKET_SIZE):
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
    """Peer closed the channel: deliver what is buffered, then its EOF, so the close finishes.

    asyncssh holds data (and an EOF behind it) while reading is paused. A CLOSE arriving then
    overwrote the pending EOF and the session never heard of it: a stream that ended
    properly looked cut off. The buffered data is now delivered at once (nothing more can
    come, so there is nothing to hold back), and the EOF after it.
    """
    eof_pending = self._recv_state == "eof_pending"
    if self._recv_paused is True:
        self._recv_paused = False
    _orig_process_close(self, pkttype, pktid, packet)
    if eof_pending and not self._recv_buf and self._session is not None:
        self._session.eof_received()


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


# ------------------------------------------------------------------------- sending
def _padding(n: int) -> bytes:
    """``n`` random padding bytes from a pooled ``os.urandom`` block (each byte used once)."""
    global _pad_pool, _pad_off
    off = _pad_off
    if off + n > len(_pad_pool):
        _pad_pool = os.urandom(_PAD_POOL)
        off = 0
    _pad_off = off + n
    return _pad_pool[off:off + n]


def _aesgcm(cipher: Any) -> AESGCM:
    """The ``AESGCM`` object for a GCMCipher's key, created once (asyncssh makes one per packet)."""
    aead = cipher.__dict__.get("_cdr_aead")
    if aead is None:
        aead = cipher._cdr_aead = AESGCM(cipher._key)
    return aead


def _gcm_encrypt_and_sign(self: Any, header: bytes, data: bytes) -> tuple[bytes, bytes]:
    """GCMCipher.encrypt_and_sign with a cached AESGCM object."""
    sealed = _aesgcm(self).encrypt(self._iv, data, header)
    self._update_iv()
    return header + sealed[:-_GCM_TAG], sealed[-_GCM_TAG:]


def _gcm_verify_and_decrypt(self: Any, header: bytes, data: bytes, mac: bytes) -> bytes | None:
    """GCMCipher.verify_and_decrypt with a cached AESGCM object."""
    try:
        plain: bytes | None = _aesgcm(self).decrypt(self._iv, data + mac, header)
    except InvalidTag:
        plain = None
    self._update_iv()
    return plain


def _rekey_due(self: Any) -> bool:
    return bool(self._rekey_bytes_sent >= self._rekey_bytes
                or (self._rekey_seconds and time.monotonic() >= self._rekey_time))


def _send_packet(self: Any, pkttype: int, *args: bytes, handler: Any = None) -> None:
    """SSHConnection.send_packet: no IGNORE ahead of each packet under AEAD, pooled padding."""
    if self._auth_complete and self._kex_complete and _rekey_due(self):
        self._send_kexinit()
        self._kexinit_sent = True
    if (((pkttype in _DEFERRED_BEFORE_KEX or pkttype > MSG_KEX_LAST)
         and not self._kex_complete)
            or (pkttype == MSG_USERAUTH_BANNER
                and not (self._auth_in_progress or self._auth_complete))
            or (pkttype > MSG_USERAUTH_LAST and not self._auth_complete)):
        self._deferred_packets.append((pkttype, args))
        return
    enc = self._send_encryption
    if enc is not None and pkttype > MSG_KEX_LAST and not isinstance(enc, _AEAD):
        self.send_packet(MSG_IGNORE, _EMPTY_STRING)  # CBC/CTR: asyncssh's defence, kept
    orig_payload = b"".join((Byte(pkttype), *args))
    if self._compressor and (self._auth_complete or not self._compress_after_auth):
        payload = self._compressor.compress(orig_payload)
        if payload is None:
            raise asyncssh.CompressionError("Compression failed")
    else:
        payload = orig_payload
    blocksize = self._send_blocksize
    padlen = -(self._send_enchdrlen + len(payload)) % blocksize
    if padlen < 4:
        padlen += blocksize
    packet = b"".join((_PAD_BYTES[padlen], payload, _padding(padlen)))
    pktlen = len(packet)
    hdr = UInt32(pktlen)
    seq = self._send_seq
    if enc is not None:
        packet, mac = enc.encrypt_packet(seq, hdr, packet)
        self._send(packet + mac)
    else:
        self._send(hdr + packet)
    if self._send_seq == 0xFFFFFFFF and enc is None:
        self._send_seq = 0
        raise ProtocolError("Sequence rollover before kex complete")
    if pkttype == MSG_NEWKEYS and self._strict_kex:
        self._send_seq = 0
    else:
        self._send_seq = (seq + 1) & 0xFFFFFFFF
    if self._kex_complete:
        self._rekey_bytes_sent += pktlen
    if SSHLogger._debug_level >= 3:
        (handler or self).log_sent_packet(pkttype, seq, orig_payload)


def _send_channel_data(chan: Any, data: bytes | memoryview) -> None:
    """Send one CHANNEL_DATA packet; under AES-GCM in steady state, with one copy."""
    conn = chan._conn
    enc = conn._send_encryption
    if (type(enc) is not GCMEncryption or not conn._kex_complete or not conn._auth_complete
            or conn._compressor is not None or chan._send_chan is None
            or SSHLogger._debug_level >= 3 or _rekey_due(conn)):
        chan.send_packet(MSG_CHANNEL_DATA, String(data))
        return
    n = len(data)
    # GCM leaves the length in clear: padlen byte + type + channel + data length + data
    # + padding must be a multiple of the 16-byte block.
    padlen = -(10 + n) % 16
    if padlen < 4:
        padlen += 16
    pktlen = 10 + n + padlen
    hdr = pktlen.to_bytes(4, "big")
    plain = b"".join((
        _PAD_BYTES[padlen], _DATA_BYTE, chan._send_chan.to_bytes(4, "big"),
        n.to_bytes(4, "big"), data, _padding(padlen),
    ))
    cipher = enc._cipher
    out = bytearray(4 + pktlen + _GCM_TAG)
    out[:4] = hdr
    with memoryview(out) as view, view[4:] as body:
        _aesgcm(cipher).encrypt_into(cipher._iv, plain, hdr, body)
    cipher._update_iv()
    conn._send(out)
    conn._send_seq = (conn._send_seq + 1) & 0xFFFFFFFF
    conn._rekey_bytes_sent += pktlen


def _chan_write(self: Any, data: Any, datatype: Any = None) -> None:
    """SSHChannel.write without copying the caller's bytes into a bytearray."""
    if self._send_state != "open":
        raise BrokenPipeError("Channel not open for sending")
    if datatype is not None and datatype not in self._write_datatypes:
        raise OSError("Invalid extended data type")
    if not data:
        return
    if self._encoding:
        encoded = self._encoder.encode(data)
    else:
        encoded = data if type(data) is bytes else bytes(data)  # callers may reuse buffers
    if SSHLogger._debug_level >= 2:
        self.logger.debug2("Sending %d data bytes", len(encoded))
    self._send_buf.append((encoded, datatype))
    self._send_buf_len += len(encoded)
    self._flush_send_buf()


def _flush_send_buf(self: Any) -> None:
    """SSHChannel._flush_send_buf splitting with memoryviews, data through the fast path."""
    send_buf = self._send_buf
    while send_buf and self._send_window:
        pktsize = min(self._send_window, self._send_pktsize)
        buf, datatype = send_buf[0]
        if len(buf) > pktsize:
            view = buf if type(buf) is memoryview else memoryview(buf)
            data = view[:pktsize]
            send_buf[0] = (view[pktsize:], datatype)
        else:
            data = buf
            del send_buf[0]
        n = len(data)
        self._send_buf_len -= n
        self._send_window -= n
        if datatype is None:
            _send_channel_data(self, data)
        else:
            self.send_packet(MSG_CHANNEL_EXTENDED_DATA, UInt32(datatype), String(data))
    self._pause_resume_writing()
    if not self._send_buf:
        if self._send_state == "eof_pending":
            self.send_packet(MSG_CHANNEL_EOF)
            self._send_state = "eof"
        elif self._send_state == "close_pending":
            self._close_send()


# ------------------------------------------------------------------ channel lifecycle
def _unix_process_open(self: Any, send_chan: int, send_window: int, send_pktsize: int,
                       session: Any) -> None:
    """SSHUNIXChannel.process_open: a ready session is confirmed now, not in a new task."""
    if inspect.isawaitable(session):
        _orig["process_open"](self, send_chan, send_window, send_pktsize, session)
        return
    self._send_chan = send_chan
    self._send_window = send_window
    self._send_pktsize = send_pktsize
    # SSHChannel._finish_open_request, then SSHForwardChannel's additions, without the await.
    conn = self._conn
    if not conn:  # defensive: the open arrived on this connection, so it is still there
        session.connection_lost(asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED,
                                                          "SSH connection closed"))
        self._loop.call_soon(self._cleanup)
        return
    chan, self._session = self._wrap_session(session)
    conn.send_channel_open_confirmation(send_chan, self._recv_chan, self._recv_window,
                                        self._recv_pktsize)
    self._send_state = "open"
    self._recv_state = "open"
    self._session.connection_made(chan)
    if self._session is not None:
        self._session.session_started()
        _join_connection_pause(self)
        self.resume_reading()


def _join_connection_pause(chan: Any) -> None:
    """A channel opened while its connection's transport is congested starts paused too."""
    if getattr(chan._conn, "_cdr_write_paused", False) and chan._session is not None:
        chan._cdr_conn_paused = True
        chan._session.pause_writing()


OpenCallback = Callable[[BaseException | None], None]


class _OpenWaiter:
    """Stands in for the future asyncssh awaits while a channel opens: calls back instead."""

    __slots__ = ("_chan", "_factory", "_on_open")

    def __init__(self, chan: Any, factory: Callable[[], Any], on_open: OpenCallback) -> None:
        self._chan = chan
        self._factory = factory
        self._on_open = on_open

    def cancelled(self) -> bool:
        return False

    def set_result(self, packet: SSHPacket) -> None:
        # SSHForwardChannel._open_forward after its await; reading starts at once instead of
        # in a _start_reading task (the session could pause it in connection_made, as there).
        chan = self._chan
        packet.check_end()  # malformed: a protocol error ends the connection, as in asyncssh
        session = chan._session = self._factory()
        session.connection_made(chan)
        session.session_started()
        _join_connection_pause(chan)
        if chan._recv_paused == "starting":
            chan._recv_paused = False
            chan._flush_recv_buf()
        self._on_open(None)

    def set_exception(self, exc: BaseException) -> None:
        self._on_open(exc)


def open_unix_channel(conn: asyncssh.SSHClientConnection, path: str,
                      session_factory: Callable[[], Any], on_open: OpenCallback) -> Any:
    """Open a ``direct-streamlocal@openssh.com`` channel to ``path``.

    ``on_open(None)`` runs when the peer confirmed it (the session from ``session_factory``
    is attached and reading), ``on_open(error)`` when it refused or the connection closed
    (an :class:`asyncssh.ChannelOpenError`). Same packets as ``create_unix_connection``;
    without the fixes applied (another asyncssh), that public coroutine runs in a task.
    Returns the opening channel, or None on that fallback.
    """
    if not _applied:
        return _open_in_task(conn, path, session_factory, on_open)
    chan = conn.create_unix_channel(window=CHANNEL_WINDOW, max_pktsize=MAX_PACKET_SIZE)
    chan.set_extra_info(local_peername="", remote_peername=path)
    chan._open_waiter = _OpenWaiter(chan, session_factory, on_open)
    conn.send_packet(MSG_CHANNEL_OPEN, String(b"direct-streamlocal@openssh.com"),
                     UInt32(chan._recv_chan), UInt32(chan._recv_window),
                     UInt32(chan._recv_pktsize), String(path), _EMPTY_STRING, UInt32(0),
                     handler=chan)
    return chan


def _open_in_task(conn: asyncssh.SSHClientConnection, path: str,
                  session_factory: Callable[[], Any], on_open: OpenCallback) -> None:
    async def opening() -> None:
        try:
            await conn.create_unix_connection(session_factory, path, window=CHANNEL_WINDOW,
                                              max_pktsize=MAX_PACKET_SIZE)
        except (OSError, asyncssh.Error) as exc:
            on_open(exc)
            return
        on_open(None)

    _tasks.add(task := asyncio.get_running_loop().create_task(opening()))
    task.add_done_callback(_tasks.discard)


def _send(self: Any, data: bytes) -> None:
    """SSHConnection._send: collected while corked (see :class:`Corked`), else written."""
    cork = self._cdr_cork
    if cork is not None:
        cork.append(data)
        return
    if self._transport:
        try:  # noqa: SIM105 - per packet: no context manager
            self._transport.write(data)
        except ConnectionError:
            pass


class Corked:
    """``with Corked(chan):`` packets the channel's connection sends inside leave in one write.

    Order is kept (everything the connection sends goes through ``_send``); nested use and
    an unpatched asyncssh just send as usual.
    """

    __slots__ = ("_conn", "_parts")

    def __init__(self, chan: Any) -> None:
        self._conn = chan._conn if _applied else None
        self._parts: list[bytes] | None = None

    def __enter__(self) -> None:
        conn = self._conn
        if conn is not None and conn._cdr_cork is None:
            self._parts = conn._cdr_cork = []

    def __exit__(self, *exc: object) -> None:
        parts = self._parts
        if parts is None:
            return
        conn = self._conn
        conn._cdr_cork = None
        if parts:
            conn._send(parts[0] if len(parts) == 1 else b"".join(parts))


# ------------------------------------------------------------------ per-packet chores
def _logger_log(self: Any, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
    """SSHLogger.log that checks the level before converting its arguments to text."""
    if self.isEnabledFor(level):
        _orig["SSHLogger.log"](self, level, msg, *args, **kwargs)


def _logger_info(self: Any, msg: object, *args: Any, **kwargs: Any) -> None:
    """SSHLogger.info (several per channel) that returns at once when info is not logged."""
    if self.isEnabledFor(logging.INFO):
        _orig["SSHLogger.log"](self, logging.INFO, msg, *args, **kwargs)


def _log_packet(self: Any, msg: str, pkttype: int, pktid: Any, packet: Any, note: str) -> None:
    """SSHPacketLogger._log_packet only when packet logging is on (debug level 3)."""
    if SSHLogger._debug_level >= 3:
        _orig["_log_packet"](self, msg, pkttype, pktid, packet, note)


def _reset_keepalive_timer(self: Any) -> None:
    """Note the receive time; the keepalive timer re-arms itself instead of being replaced."""
    if self._auth_complete:
        self._cdr_rx_at = self._loop.time()
        if self._keepalive_timer is None:
            self._set_keepalive_timer()


def _keepalive_timer_callback(self: Any) -> None:
    """Probe only after a full interval without input, as asyncssh's reset timer does."""
    idle = self._loop.time() - self._cdr_rx_at
    if self._keepalive_interval and idle < self._keepalive_interval:
        self._keepalive_timer = self._loop.call_later(
            self._keepalive_interval - idle, self._keepalive_timer_callback)
        return
    _orig["_keepalive_timer_callback"](self)


# ----------------------------------------------------------------------- receiving
class _Decrypted:
    """Stands in for the receive cipher while asyncssh dispatches an already-decrypted packet."""

    __slots__ = ("conn", "enc", "plain")

    def __init__(self, conn: Any, enc: Any, plain: bytes) -> None:
        self.conn = conn
        self.enc = enc
        self.plain = plain

    def decrypt_packet(self, seq: int, first: bytes, rest: bytes, header_len: int,
                       mac: bytes) -> bytes:
        self.conn._recv_encryption = self.enc  # dispatch (and NEWKEYS) sees the real cipher
        return self.plain


def _data_received(self: Any, data: bytes, datatype: Any = None) -> None:
    """SSHConnection.data_received, appending in place once the buffer is a bytearray.

    The buffer stays ``bytes`` (asyncssh's own handling) until the first binary packet, so
    the version banner is parsed exactly as asyncssh does; :func:`_recv_packet` converts it.
    """
    buf = self._inpbuf
    if type(buf) is bytearray:
        buf += data
    else:
        self._inpbuf = buf + data
    self._recv_data()


def _recv_pkthdr(self: Any) -> bool:
    """Decrypt the first block's length; the block stays in the buffer (no copy of the rest)."""
    buf = self._inpbuf
    blocksize = self._recv_blocksize
    if len(buf) < blocksize:
        return False
    first = bytes(buf[:blocksize])
    if self._recv_encryption:
        first, pktlen = self._recv_encryption.decrypt_header(self._recv_seq, first, 4)
    else:
        pktlen = first[:4]
    self._packet = first
    self._pktlen = int.from_bytes(pktlen, "big")
    if self._pktlen > self._max_recv_pktlen:
        raise ProtocolError("Max packet size exceeded")
    self._recv_handler = self._recv_packet
    return True


def _recv_packet(self: Any) -> bool:
    """Decrypt one packet in place; CHANNEL_DATA goes straight to its channel."""
    buf = self._inpbuf
    total = 4 + self._pktlen + self._recv_macsize
    if type(buf) is not bytearray:
        buf = self._inpbuf = bytearray(buf)
    if len(buf) < total:
        return False
    blocksize = self._recv_blocksize
    enc = self._recv_encryption
    if enc is None or self._decompressor is not None:
        del buf[:blocksize]  # before encryption or with compression: asyncssh's own code
        return _orig["_recv_packet"](self)  # type: ignore[no-any-return]
    seq = self._recv_seq
    if type(enc) is GCMEncryption:
        cipher = enc._cipher
        with memoryview(buf) as view, view[4:total] as sealed:
            try:
                plain: bytes | None = _aesgcm(cipher).decrypt(cipher._iv, sealed, self._packet[:4])
            except InvalidTag:
                plain = None
        cipher._update_iv()
    else:
        macsize = self._recv_macsize
        plain = enc.decrypt_packet(seq, self._packet, bytes(buf[blocksize:total - macsize]), 4,
                                   bytes(buf[total - macsize:total]))
    if not plain:
        raise MACError("MAC verification failed")
    padlen = plain[0]
    end = len(plain) - padlen
    if (plain[1] == MSG_CHANNEL_DATA and padlen >= 4 and end > 10 and self._auth_complete
            and SSHLogger._debug_level < 2):
        chan = self._channels.get(int.from_bytes(plain[2:6], "big"))
        size = int.from_bytes(plain[6:10], "big")
        if (chan is not None and size == end - 10 and chan._recv_state == "open"
                and size <= chan._recv_window):
            del buf[:total]
            chan._accept_data(plain[10:end])
            self._auth_final = True
            self._recv_seq = (seq + 1) & 0xFFFFFFFF
            self._recv_handler = self._recv_pkthdr
            return True
    pkttype = plain[1]
    if (pkttype in _FAST_DISPATCH and padlen >= 4 and end >= 2 and self._auth_complete
            and SSHLogger._debug_level < 3):
        # Channel open, confirmation, failure, window adjust, EOF and close: the synchronous
        # handler asyncssh would pick, without its generic checks, logging calls and copies
        # (all five or six packets of a forwarded connection that carry no data).
        owner: Any = self
        body = 2
        if pkttype in _CONTROL_FAST:
            owner = self._channels.get(int.from_bytes(plain[2:6], "big")) if end >= 6 else None
            body = 6
        if owner is not None:
            del buf[:total]
            try:
                owner._packet_handlers[pkttype](owner, pkttype, seq, SSHPacket(plain[body:end]))
            except PacketDecodeError as exc:
                raise ProtocolError(str(exc)) from None
            self._auth_final = True
            if self._transport:
                self._recv_seq = (seq + 1) & 0xFFFFFFFF
            self._recv_handler = self._recv_pkthdr
            return True
    # Anything else: asyncssh's _recv_packet checks and dispatches it, from a buffer holding
    # just this packet and with a stand-in cipher that returns the plaintext.
    packet = bytes(buf[blocksize:total])
    del buf[:total]
    stand_in = _Decrypted(self, enc, plain)
    self._recv_encryption = stand_in
    self._inpbuf = packet
    try:
        return _orig["_recv_packet"](self)  # type: ignore[no-any-return]
    finally:
        if self._recv_encryption is stand_in:
            self._recv_encryption = enc
        self._inpbuf = buf


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
    _orig["_recv_packet"] = _connection.SSHConnection._recv_packet
    _orig["_keepalive_timer_callback"] = _connection.SSHConnection._keepalive_timer_callback
    _orig["SSHLogger.log"] = SSHLogger.log
    _orig["_log_packet"] = _packet.SSHPacketLogger._log_packet
    _orig["process_open"] = _channel.SSHChannel.process_open
    patches: list[tuple[Any, str, Any]] = [
        (_channel.SSHChannel, "_deliver_data", _deliver_data),
        (_channel.SSHChannel, "_pause_resume_writing", _pause_resume_writing),
        (_channel.SSHChannel, "_process_close", _process_close),
        (_channel.SSHChannel, "pause_reading", _pause_reading),
        (_channel.SSHChannel, "write", _chan_write),
        (_channel.SSHChannel, "_flush_send_buf", _flush_send_buf),
        (_channel.SSHUNIXChannel, "process_open", _unix_process_open),
        (_connection.SSHConnection, "pause_writing", _conn_pause_writing),
        (_connection.SSHConnection, "resume_writing", _conn_resume_writing),
        (_connection.SSHConnection, "send_packet", _send_packet),
        (_connection.SSHConnection, "data_received", _data_received),
        (_connection.SSHConnection, "_recv_pkthdr", _recv_pkthdr),
        (_connection.SSHConnection, "_recv_packet", _recv_packet),
        (_connection.SSHConnection, "_reset_keepalive_timer", _reset_keepalive_timer),
        (_connection.SSHConnection, "_keepalive_timer_callback", _keepalive_timer_callback),
        (_connection.SSHConnection, "_cdr_rx_at", 0.0),
        (_connection.SSHConnection, "_cdr_cork", None),
        (_connection.SSHConnection, "_send", _send),
        (SSHLogger, "log", _logger_log),
        (SSHLogger, "info", _logger_info),
        (_packet.SSHPacketLogger, "_log_packet", _log_packet),
        (_cipher.GCMCipher, "encrypt_and_sign", _gcm_encrypt_and_sign),
        (_cipher.GCMCipher, "verify_and_decrypt", _gcm_verify_and_decrypt),
    ]
    for owner, name, func in patches:
        setattr(owner, name, func)
    # packets are dispatched through a class-level table built from the original functions
    _channel.SSHChannel._packet_handlers[MSG_CHANNEL_CLOSE] = _process_close
    _applied = True
    return True


def tune_transport(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> None:
    """Give the SSH TCP transport the write-buffer limits the connection-level pause expects."""
    transport = getattr(conn, "_transport", None)
    if transport is not None:
        transport.set_write_buffer_limits(high=TRANSPORT_HIGH_WATER, low=TRANSPORT_LOW_WATER)
