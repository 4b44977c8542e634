"""Adapters that plug transports into the pump: an SSH channel, an asyncio stream transport."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncssh

from container_desktop_relay import sshtune
from container_desktop_relay.pump import Pump, Side

__all__ = ["ChannelEnd", "TransportEnd"]


class ChannelEnd(asyncssh.SSHUNIXSession[bytes]):
    """An SSH ``direct-streamlocal`` channel as one side of a pump."""

    __slots__ = ("_chan", "pump", "side")

    def __init__(self, pump: Pump, side: Side) -> None:
        self.pump = pump
        self.side = side
        self._chan: asyncssh.SSHUNIXChannel[bytes] | None = None

    # asyncssh session callbacks
    def connection_made(self, chan: asyncssh.SSHUNIXChannel[bytes]) -> None:  # type: ignore[override]
        self._chan = chan
        self.pump.attach(self.side, self)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.pump.data(self.side, data)

    def eof_received(self) -> bool:
        self.pump.eof(self.side)
        return True

    def pause_writing(self) -> None:
        self.pump.pause_writing(self.side)

    def resume_writing(self) -> None:
        self.pump.resume_writing(self.side)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pump.lost(self.side, exc)

    # End
    def write(self, data: bytes) -> None:
        chan = self._chan
        if chan is not None:
            # A closing channel raises BrokenPipeError; the pump learns via connection_lost.
            # try/except, not contextlib.suppress: this runs for every chunk (profiled ~2%).
            try:  # noqa: SIM105
                chan.write(data)
            except BrokenPipeError:
                pass

    def write_eof(self) -> None:
        chan = self._chan
        if chan is not None:
            with contextlib.suppress(OSError):
                chan.write_eof()

    def finish(self) -> None:
        chan = self._chan
        if chan is not None:
            with sshtune.Corked(chan):  # EOF and CLOSE leave in one send()
                self.write_eof()
                chan.close()

    def pause_reading(self) -> None:
        if self._chan is not None:
            self._chan.pause_reading()

    def resume_reading(self) -> None:
        if self._chan is not None:
            self._chan.resume_reading()

    def close(self) -> None:
        if self._chan is not None:
            self._chan.close()

    def abort(self) -> None:
        if self._chan is not None:
            self._chan.abort()


class TransportEnd(asyncio.Protocol):
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

    def eof_received(self) -> bool:
        self.pump.eof(self.side)
        return True

    def pause_writing(self) -> None:
        self.pump.pause_writing(self.side)

    def resume_writing(self) -> None:
        self.pump.resume_writing(self.side)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pump.lost(self.side, exc)

    # End
    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

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
        if self.transport is not None:
            self.transport.abort()
