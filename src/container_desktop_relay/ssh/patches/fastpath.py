"""Speed paths through asyncssh: sending, receiving and per-packet chores without the copies.

Measured in docs/performance.md (bulk MB/s and CPU per GiB through ``ssh -L`` and the relay).
None changes the wire format: tests/e2e/test_sshtune_interop.py runs them against OpenSSH.
Each is a :class:`~container_desktop_relay.ssh.patches.guard.Patch`:

``send-path``
    No SSH_MSG_IGNORE ahead of every packet under AEAD ciphers (asyncssh's defence for CBC's
    predictable IV; CBC and CTR keep it); padding from a pooled ``os.urandom`` block; channel
    writes keep the caller's ``bytes`` (large ones split with memoryviews); CHANNEL_DATA under
    AES-GCM built with one ``join`` and sealed with ``encrypt_into`` behind its header.
``receive-path``
    The input buffer is a ``bytearray`` consumed with ``del buf[:n]`` (asyncssh re-slices
    ``bytes``, copying the rest twice per packet), AES-GCM decrypts from a memoryview of it,
    CHANNEL_DATA for an open channel goes straight to ``_accept_data``, and channel open,
    confirmation, failure, window adjust, EOF and close go straight to their handlers (the
    checks asyncssh makes first concern key exchange and authentication, settled by then).
    Any other packet goes, decrypted, through asyncssh's own ``_recv_packet``.
``aead-cache``
    One ``AESGCM`` object per key instead of one per packet.
``quiet-logging``
    ``SSHLogger`` checks the level before formatting; packet logs are skipped below debug
    level 3.
``keepalive-timer``
    The keepalive timer re-arms itself for the rest of the interval when input arrived,
    instead of being cancelled and re-created on every ``data_received`` (same detection time).
"""

from __future__ import annotations

import logging
import os
import time
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

from container_desktop_relay.ssh.patches.guard import Patch, Target

__all__ = ["FINGERPRINTS", "PATCHES"]

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

_Channel = _channel.SSHChannel
_Connection = _connection.SSHConnection
_GCMCipher = _cipher.GCMCipher
# asyncssh's own functions, kept before anything is replaced
_ORIG_RECV_PACKET = _Connection._recv_packet
_ORIG_KEEPALIVE_CALLBACK = _Connection._keepalive_timer_callback
_ORIG_LOGGER_LOG = SSHLogger.log
_ORIG_LOG_PACKET = _packet.SSHPacketLogger._log_packet

_pad_pool = b""
_pad_off = 0

#: Fingerprints of asyncssh 2.24.1's functions (guard.fingerprint; the same on 3.11 and 3.12).
FINGERPRINTS = {
    "GCMCipher.__init__": "099a6826ad8a2eee",
    "GCMCipher._update_iv": "b582bac0bddabe0c",
    "GCMCipher.encrypt_and_sign": "367d0b40fae51655",
    "GCMCipher.verify_and_decrypt": "4b50f47f111ff28c",
    "SSHChannel._flush_send_buf": "74adaff124c708b0",
    "SSHChannel.write": "fd713f04338299c0",
    "SSHConnection._keepalive_timer_callback": "ed0676e3bc2a3a17",
    "SSHConnection._recv_data": "5ce38434202c2f12",
    "SSHConnection._recv_packet": "5a187c797e01f90a",
    "SSHConnection._recv_pkthdr": "14f15bb71f23063b",
    "SSHConnection._reset_keepalive_timer": "372d2855948700e7",
    "SSHConnection._send": "a64038b3e65d9eb5",
    "SSHConnection._set_keepalive_timer": "17355cc040cbcff7",
    "SSHConnection.data_received": "c5d19899834f0aac",
    "SSHConnection.send_packet": "f8b8b789882eb324",
    "SSHLogger.info": "5389f58fca1b63e5",
    "SSHLogger.log": "a9b72b380de3d5d0",
    "SSHPacketLogger._log_packet": "2a8c1534e16ba5e9",
}


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
    aead: AESGCM | None = cipher.__dict__.get("_cdr_aead")
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
        # asyncssh types String() as bytes | str; it concatenates, so a memoryview works too
        chan.send_packet(MSG_CHANNEL_DATA, String(data))  # type: ignore[arg-type]
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
            self.send_packet(MSG_CHANNEL_EXTENDED_DATA, UInt32(datatype),
                             String(data))  # type: ignore[arg-type]  # see _send_channel_data
    self._pause_resume_writing()
    if not self._send_buf:
        if self._send_state == "eof_pending":
            self.send_packet(MSG_CHANNEL_EOF)
            self._send_state = "eof"
        elif self._send_state == "close_pending":
            self._close_send()


# ------------------------------------------------------------------ per-packet chores
def _logger_log(self: Any, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
    """SSHLogger.log that checks the level before converting its arguments to text."""
    if self.isEnabledFor(level):
        _ORIG_LOGGER_LOG(self, level, msg, *args, **kwargs)


def _logger_info(self: Any, msg: object, *args: Any, **kwargs: Any) -> None:
    """SSHLogger.info (several per channel) that returns at once when info is not logged."""
    if self.isEnabledFor(logging.INFO):
        _ORIG_LOGGER_LOG(self, logging.INFO, msg, *args, **kwargs)


def _log_packet(self: Any, msg: str, pkttype: int, pktid: Any, packet: Any, note: str) -> None:
    """SSHPacketLogger._log_packet only when packet logging is on (debug level 3)."""
    if SSHLogger._debug_level >= 3:
        _ORIG_LOG_PACKET(self, msg, pkttype, pktid, packet, note)


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
    _ORIG_KEEPALIVE_CALLBACK(self)


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
        return _ORIG_RECV_PACKET(self)
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
        return _ORIG_RECV_PACKET(self)
    finally:
        if self._recv_encryption is stand_in:
            self._recv_encryption = enc
        self._inpbuf = buf


def _target(owner: Any, label: str, name: str, new: Any = None) -> Target:
    return Target(owner, name, label, FINGERPRINTS[label], new)


def _gcm_relied() -> list[Target]:
    """GCMCipher internals (``_key``, ``_iv``, ``_update_iv``) the AES-GCM shortcuts use."""
    return [_target(_GCMCipher, "GCMCipher.__init__", "__init__"),
            _target(_GCMCipher, "GCMCipher._update_iv", "_update_iv")]


PATCHES = [
    Patch("send-path", "speed",
          "no IGNORE before each AEAD packet, pooled padding, copy-free channel writes",
          [_target(_Connection, "SSHConnection.send_packet", "send_packet", _send_packet),
           _target(_Connection, "SSHConnection._send", "_send"),
           _target(_Channel, "SSHChannel.write", "write", _chan_write),
           _target(_Channel, "SSHChannel._flush_send_buf", "_flush_send_buf", _flush_send_buf),
           *_gcm_relied()]),
    Patch("receive-path", "speed",
          "bytearray input buffer, in-place AES-GCM, CHANNEL_DATA and channel control direct",
          [_target(_Connection, "SSHConnection.data_received", "data_received", _data_received),
           _target(_Connection, "SSHConnection._recv_pkthdr", "_recv_pkthdr", _recv_pkthdr),
           _target(_Connection, "SSHConnection._recv_packet", "_recv_packet", _recv_packet),
           _target(_Connection, "SSHConnection._recv_data", "_recv_data"),
           *_gcm_relied()]),
    Patch("aead-cache", "speed", "one AESGCM object per key, not per packet",
          [_target(_GCMCipher, "GCMCipher.encrypt_and_sign", "encrypt_and_sign",
                   _gcm_encrypt_and_sign),
           _target(_GCMCipher, "GCMCipher.verify_and_decrypt", "verify_and_decrypt",
                   _gcm_verify_and_decrypt),
           *_gcm_relied()]),
    Patch("quiet-logging", "speed", "log levels checked before formatting; no packet logs "
          "below debug level 3",
          [_target(SSHLogger, "SSHLogger.log", "log", _logger_log),
           _target(SSHLogger, "SSHLogger.info", "info", _logger_info),
           _target(_packet.SSHPacketLogger, "SSHPacketLogger._log_packet", "_log_packet",
                   _log_packet)]),
    Patch("keepalive-timer", "speed", "the keepalive timer re-arms itself instead of being "
          "replaced on every receive",
          [_target(_Connection, "SSHConnection._reset_keepalive_timer", "_reset_keepalive_timer",
                   _reset_keepalive_timer),
           _target(_Connection, "SSHConnection._keepalive_timer_callback",
                   "_keepalive_timer_callback", _keepalive_timer_callback),
           _target(_Connection, "SSHConnection._set_keepalive_timer", "_set_keepalive_timer"),
           Target(_Connection, "_cdr_rx_at", "SSHConnection._cdr_rx_at", "", 0.0, added=True)]),
]
