"""The pump's end for an asyncio stream transport (a Unix socket or a named pipe connection)."""

from __future__ import annotations

import array
import asyncio
import contextlib
import socket
import struct
import sys
from typing import Any

from container_desktop_relay.core.pump import Pump, Side

__all__ = ["PumpFeed", "TransportEnd"]

if sys.platform == "win32":
    fcntl = None
    _OUTQ: int | None = None
else:
    import fcntl
    import termios

    #: SIOCOUTQ (== TIOCOUTQ on Linux): unread bytes in a socket's send queue
    _OUTQ = termios.TIOCOUTQ


class PumpFeed:
    """What every end passes straight to its pump: EOF, the far side's flow control, loss.
    An end sets ``pump`` and ``side`` and lists this class first among its bases."""

    __slots__ = ()
    pump: Pump
    side: Side

    def eof_received(self) -> bool:
        self.pump.eof(self.side)
        return True

    def pause_writing(self) -> None:
        self.pump.pause_writing(self.side)

    def resume_writing(self) -> None:
        self.pump.resume_writing(self.side)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pump.lost(self.side, exc)


class TransportEnd(PumpFeed, asyncio.Protocol):
    """An asyncio stream transport (Unix socket, named pipe) as one side of a pump.

    ``buffer_size`` is the write high-water mark: once that much is queued for this side, the
    pump pauses the other side's reader until it drains to a quarter of it.
    """

    def __init__(self, pump: Pump, side: Side, buffer_size: int) -> None:
        self.pump = pump
        self.side = side
        self.buffer_size = buffer_size
        self.transport: asyncio.Transport | None = None
        self._reading_paused = False
        self._eof_sent = False

    # asyncio protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        assert self.transport is not None
        self.transport.set_write_buffer_limits(
            high=self.buffer_size, low=max(self.buffer_size // 4, 1)
        )
        self.pump.attach(self.side, self)

    def data_received(self, data: bytes) -> None:
        self.pump.data(self.side, data)

    # End
    def write(self, data: bytes) -> int:
        transport = self.transport
        if transport is None:
            return 0
        if not transport.is_closing():
            transport.write(data)
        return transport.get_write_buffer_size()

    def queued(self) -> int:
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def backlog(self) -> int:
        # A Unix socket becomes writable again only once its peer has read ~3/4 of the
        # kernel's send buffer (~160 KB: 8 s at 20 KiB/s), so the relay's own queue shows a
        # slow reader's progress in big steps; the kernel's send queue shows it per packet.
        transport = self.transport
        if transport is None:
            return 0
        return transport.get_write_buffer_size() + self.kernel_queue(transport)

    @staticmethod
    def kernel_queue(transport: asyncio.BaseTransport) -> int:
        """Bytes in the socket's kernel send queue not yet read by the peer (0 if unknown)."""
        sock = transport.get_extra_info("socket")
        if sys.platform == "win32" or sock is None or _OUTQ is None:
            return 0
        buf = array.array("i", [0])
        try:
            fcntl.ioctl(sock.fileno(), _OUTQ, buf)
        except (OSError, ValueError):  # closed, or not a socket (a named pipe)
            return 0
        return max(buf[0], 0)

    def write_eof(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self._eof_sent:
            return
        self._eof_sent = True
        if transport.can_write_eof():
            with contextlib.suppress(OSError):
                transport.write_eof()
        else:
            self.write_eof_unsupported(transport)

    def finish(self) -> None:
        # A graceful close flushes what is queued and then ends the stream: the peer reads
        # the same EOF that write_eof would give, without the extra shutdown() call.
        self.close()

    def write_eof_unsupported(self, transport: Any) -> None:
        """Half-close for transports without ``write_eof``; subclasses emulate it."""
        transport.close()

    def pause_reading(self) -> None:
        transport = self.transport
        if transport is not None and not self._reading_paused and not transport.is_closing():
            self._reading_paused = True
            transport.pause_reading()

    def resume_reading(self) -> None:
        transport = self.transport
        if transport is not None and self._reading_paused and not transport.is_closing():
            self._reading_paused = False
            transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close at once so the peer cannot take it for a clean end of stream.

        Linux resets a Unix-socket peer (ECONNRESET) only when the closing socket still holds
        unread bytes from it (SO_LINGER has no effect on AF_UNIX); a peer that sent nothing
        since the last read sees EOF. So nothing more is read from the peer from here on, and
        whatever it sent stays unread. A TCP socket (none today) is reset with SO_LINGER 0.
        """
        transport = self.transport
        if transport is None:
            return
        if not transport.is_closing():
            self._reading_paused = True
            with contextlib.suppress(OSError, RuntimeError):
                transport.pause_reading()
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
