"""The pump's adapters: TransportEnd over real socket pairs, ChannelEnd over a recording
stand-in for an asyncssh channel (what each pump call becomes on the transport)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from container_desktop_relay.core.ends import TransportEnd
from container_desktop_relay.core.pump import CLIENT, TARGET, Pump
from container_desktop_relay.ssh.channel import ChannelEnd

TIMEOUT = 10.0


async def _recv_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while data := await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), TIMEOUT):
        got += data
    return bytes(got)


async def _wrap(pump: Pump, side: int, sock: socket.socket, buffer_size: int
                ) -> tuple[asyncio.Transport, TransportEnd]:
    loop = asyncio.get_running_loop()
    transport, end = await loop.connect_accepted_socket(
        lambda: TransportEnd(pump, side, buffer_size), sock)  # type: ignore[arg-type]
    return transport, end


def test_transport_ends_relay_both_ways_with_half_close() -> None:
    """Bytes cross exactly both ways; each EOF becomes a half-close on the other socket; the
    write buffer limits are buffer_size and a quarter of it; the pump finishes with 'done'."""

    async def run() -> None:
        done: list[Pump] = []
        pump = Pump("c-1", "/t.sock", done.append)
        client, client_relay = socket.socketpair()
        target, target_relay = socket.socketpair()
        transports: list[asyncio.Transport] = []
        try:
            for s in (client, target):
                s.setblocking(False)
            t_client, _ = await _wrap(pump, CLIENT, client_relay, 4097)
            transports.append(t_client)
            t_target, _ = await _wrap(pump, TARGET, target_relay, 4097)
            transports.append(t_target)
            # 4097, not a multiple of 4: asyncio's own defaults cannot give the same pair
            assert t_client.get_write_buffer_limits() == (1024, 4097)
            loop = asyncio.get_running_loop()
            up, down = bytes(range(256)) * 400, b"answer" * 5000
            await loop.sock_sendall(client, up)
            client.shutdown(socket.SHUT_WR)
            assert await _recv_all(target) == up  # EOF arrived after the bytes
            await loop.sock_sendall(target, down)  # the other direction still flows
            target.shutdown(socket.SHUT_WR)
            assert await _recv_all(client) == down
            async with asyncio.timeout(TIMEOUT):
                while not done:  # noqa: ASYNC110 - polls the pump's own state
                    await asyncio.sleep(0.01)
            assert (pump.up, pump.down, pump.reason) == (len(up), len(down), "done")
            assert t_target.is_closing() and t_client.is_closing()
        finally:
            for t in transports:
                t.abort()
            await asyncio.sleep(0)  # let the aborts run their connection_lost
            for s in (client, target, client_relay, target_relay):
                s.close()

    asyncio.run(run())


def test_transport_end_pauses_once_and_resumes_once() -> None:
    """pause_reading and resume_reading reach the transport once each, whatever the repeats,
    and are ignored once the transport is closing; writes after close are dropped."""

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[str] = []
            self.closing = False

        def is_closing(self) -> bool:
            return self.closing

        def can_write_eof(self) -> bool:
            self.calls.append("can_write_eof")
            return True

        def __getattr__(self, name: str) -> Any:
            return lambda *a: self.calls.append(name)

    end = TransportEnd(Pump("c", "/s"), CLIENT, 1024)
    rec = Recorder()
    end.transport = rec  # type: ignore[assignment]
    end.pause_reading()
    end.pause_reading()
    end.resume_reading()
    end.resume_reading()
    end.write(b"x")
    end.write_eof()
    end.write_eof()  # one half-close only
    rec.closing = True
    end.pause_reading()
    end.write(b"late")
    # (queries such as get_write_buffer_size and can_write_eof may come in between)
    acts = {"pause_reading", "resume_reading", "write", "write_eof", "close", "abort"}
    assert [c for c in rec.calls if c in acts] == ["pause_reading", "resume_reading", "write",
                                                   "write_eof"]


class FakeChannel:
    """Records what ChannelEnd does to its channel."""

    def __init__(self, fail: type[BaseException] | None = None) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.fail = fail
        self._conn = None

    def get_write_buffer_size(self) -> int:
        """Nothing waits for window (a query: not recorded)."""
        return 0

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any) -> None:
            self.calls.append((name, args))
            if self.fail is not None and name in ("write", "write_eof"):
                raise self.fail

        return call


def test_channel_end_passes_each_call_to_the_channel() -> None:
    """Events from the channel reach the pump as its side; the pump's calls reach the channel."""
    pump = Pump("c", "/s")
    other = ChannelEnd(pump, TARGET)
    chan, other_chan = FakeChannel(), FakeChannel()
    end = ChannelEnd(pump, CLIENT)
    end.connection_made(chan)  # type: ignore[arg-type]
    other.connection_made(other_chan)  # type: ignore[arg-type]
    assert chan.calls == [("resume_reading", ())]  # the second attach wakes the first reader
    end.data_received(b"abc", None)
    assert other_chan.calls == [("write", (b"abc",))]
    assert end.eof_received() is True
    assert other_chan.calls[-1] == ("write_eof", ())
    end.pause_writing()
    assert other_chan.calls[-1] == ("pause_reading", ())
    end.resume_writing()
    assert other_chan.calls[-1] == ("resume_reading", ())
    for method in ("pause_reading", "resume_reading", "close", "abort"):
        getattr(end, method)()
        assert chan.calls[-1] == (method, ()), method
    end.finish()
    assert chan.calls[-2:] == [("write_eof", ()), ("close", ())]
    end.connection_lost(ConnectionResetError("gone"))
    assert pump.reason == "client error: gone"


@pytest.mark.parametrize("error", [BrokenPipeError, OSError])
def test_channel_end_swallows_writes_to_a_closed_channel(error: type[OSError]) -> None:
    """A write or EOF on a channel that is already closing is dropped, not raised."""
    end = ChannelEnd(Pump("c", "/s"), CLIENT)
    chan = FakeChannel(fail=BrokenPipeError if error is BrokenPipeError else OSError)
    end.connection_made(chan)  # type: ignore[arg-type]
    if error is BrokenPipeError:
        end.write(b"x")
    end.write_eof()
    assert ("write_eof", ()) in chan.calls


def test_ends_without_a_transport_do_nothing() -> None:
    """Before connection_made, every call of the pump is a no-op (nothing to raise on)."""
    for end in (ChannelEnd(Pump("c", "/s"), CLIENT), TransportEnd(Pump("c", "/s"), CLIENT, 8)):
        for method in ("write_eof", "finish", "pause_reading", "resume_reading", "close",
                       "abort"):
            getattr(end, method)()
        end.write(b"x")


def test_transport_end_reports_its_own_side_to_the_pump() -> None:
    """Backpressure and loss on a TransportEnd reach the pump as that end's side, with the
    error that ended it."""
    from helpers import FakeEnd

    pump = Pump("c", "/s")
    client = FakeEnd()
    pump.attach(CLIENT, client)
    end = TransportEnd(pump, TARGET, 1024)
    end.pause_writing()
    assert client.paused
    end.resume_writing()
    assert not client.paused
    end.connection_lost(ConnectionResetError("reset by target"))
    assert pump.reason == "target error: reset by target" and client.aborted
