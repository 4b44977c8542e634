"""The pump's end for an SSH channel: an asyncssh session that feeds the pump and obeys it."""

from __future__ import annotations

import contextlib

import asyncssh

from container_desktop_relay.core.ends import PumpFeed
from container_desktop_relay.core.pump import Pump, Side
from container_desktop_relay.ssh import tune as sshtune

__all__ = ["ChannelEnd"]


class ChannelEnd(PumpFeed, asyncssh.SSHUNIXSession[bytes]):
    """An SSH ``direct-streamlocal`` channel as one side of a pump."""

    __slots__ = ("_chan", "_eof_written", "pump", "side")

    def __init__(self, pump: Pump, side: Side) -> None:
        self.pump = pump
        self.side = side
        self._chan: asyncssh.SSHUNIXChannel[bytes] | None = None
        self._eof_written = False

    # asyncssh session callbacks
    def connection_made(self, chan: asyncssh.SSHUNIXChannel[bytes]) -> None:
        self._chan = chan
        self.pump.attach(self.side, self)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.pump.data(self.side, data)

    # End
    def write(self, data: bytes) -> int:
        chan = self._chan
        if chan is None:
            return 0
        # A closing channel raises BrokenPipeError; the pump learns via connection_lost.
        # try/except, not contextlib.suppress: this runs for every chunk (profiled ~2%).
        try:  # noqa: SIM105
            chan.write(data)
        except BrokenPipeError:
            pass
        return chan.get_write_buffer_size()

    def queued(self) -> int:
        # Sent means the peer granted window for it: its relay took it off the channel.
        chan = self._chan
        return chan.get_write_buffer_size() if chan is not None else 0

    backlog = queued

    def write_eof(self) -> None:
        chan = self._chan
        if chan is not None:
            self._eof_written = True
            with contextlib.suppress(OSError):
                chan.write_eof()

    def finish(self) -> None:
        chan = self._chan
        if chan is None:
            return
        if chan.get_write_buffer_size():
            # Data still waits for window: asyncssh 2.24.1's close() would replace the EOF
            # queued behind it with a bare CLOSE, and the peer would take a complete stream
            # for a cut-off one. Send the EOF only; the peer closes once it has read it (the
            # close linger bounds a peer that never reads).
            self.write_eof()
            return
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
        chan = self._chan
        if chan is None:
            return
        if self._eof_written and chan.get_write_buffer_size():
            return  # our EOF waits behind data (see finish): the peer closes after reading it
        chan.close()

    def abort(self) -> None:
        if self._chan is not None:
            self._chan.abort()
