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


class SizedChannel(FakeChannel):
    """A FakeChannel whose bytes still waiting for window the test sets."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0

    def get_write_buffer_size(self) -> int:
        """What waits for window (a query: not recorded)."""
        return self.waiting


def test_channel_close_waits_only_for_its_own_eof_behind_data() -> None:
    """close() leaves a channel open only while its own EOF still waits behind data (the peer
    closes once it has read it); otherwise, queued data or not, it closes."""
    for eof, waiting, closes in ((False, 5, True), (True, 5, False), (True, 0, True)):
        end = ChannelEnd(Pump("c", "/s"), CLIENT)
        chan = SizedChannel()
        end.connection_made(chan)  # type: ignore[arg-type]
        chan.waiting = waiting
        if eof:
            end.write_eof()
        end.close()
        assert (("close", ()) in chan.calls) is closes, (eof, waiting)


def test_queued_bytes_are_what_the_transport_still_holds() -> None:
    """queued() is what the channel or transport still holds; nothing before it exists, and
    a write before then queues nothing."""
    chan = SizedChannel()
    chan_end = ChannelEnd(Pump("c", "/s"), CLIENT)
    transport_end = TransportEnd(Pump("c", "/s"), CLIENT, 1024)
    for end in (chan_end, transport_end):
        assert (end.queued(), end.backlog(), end.write(b"x")) == (0, 0, 0)
    chan_end.connection_made(chan)  # type: ignore[arg-type]
    chan.waiting = 7
    assert chan_end.queued() == 7 and chan_end.write(b"x") == 7

    class Held:
        def get_write_buffer_size(self) -> int:
            return 9

        def get_extra_info(self, name: str) -> None:
            return None

    transport_end.transport = Held()  # type: ignore[assignment]
    assert transport_end.queued() == 9 and transport_end.backlog() == 9  # no socket to ask


def test_backlog_counts_what_the_peer_has_not_read_from_the_kernel() -> None:
    """backlog() adds the kernel's send queue: what the peer has not read yet counts until it
    reads it, so a slow reader's progress shows packet by packet."""

    async def run() -> None:
        relay, peer = socket.socketpair()
        peer.setblocking(False)
        transport, end = await _wrap(Pump("c", "/s"), TARGET, relay, 1 << 20)
        try:
            assert end.backlog() == 0
            transport.write(b"x" * 1000)  # an empty transport sends at once
            assert end.queued() == 0 and end.backlog() > 0  # (Linux counts buffer memory)
            assert end.backlog() == TransportEnd.kernel_queue(transport)
            loop = asyncio.get_running_loop()
            got = b""
            while len(got) < 1000:
                got += await asyncio.wait_for(loop.sock_recv(peer, 1000), TIMEOUT)
            assert end.backlog() == 0
        finally:
            transport.abort()
            await asyncio.sleep(0)
            peer.close()

    asyncio.run(run())


class Recorder:
    """Stands in for an asyncio transport: records the calls that act on it."""

    def __init__(self, *, eof: bool = True, fail: type[BaseException] | None = None) -> None:
        self.calls: list[str] = []
        self.closing = False
        self.eof = eof
        self.fail = fail

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return self.eof

    def get_extra_info(self, name: str) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any) -> None:
            self.calls.append(name)
            if self.fail is not None and name in ("write_eof", "pause_reading"):
                raise self.fail

        return call


@pytest.mark.parametrize("fail", [OSError, RuntimeError])
def test_abort_stops_reading_and_aborts_whatever_pausing_does(fail: type[Exception]) -> None:
    """abort() stops reading first (unread bytes make the kernel reset the peer), then aborts,
    even when pausing fails (a transport already half torn down); a closing transport is
    only aborted."""
    for closing, failing, expected in ((False, None, ["pause_reading", "abort"]),
                                       (False, fail, ["pause_reading", "abort"]),
                                       (True, None, ["abort"])):
        end = TransportEnd(Pump("c", "/s"), CLIENT, 1024)
        rec = Recorder(fail=failing)
        rec.closing = closing
        end.transport = rec  # type: ignore[assignment]
        end.abort()
        assert rec.calls == expected, (closing, failing)


def test_half_close_without_write_eof_closes_and_a_failing_one_is_dropped() -> None:
    """A transport that cannot half-close is closed instead; a half-close that fails (the
    peer is gone) is dropped, not raised."""
    end = TransportEnd(Pump("c", "/s"), CLIENT, 1024)
    rec = Recorder(eof=False)
    end.transport = rec  # type: ignore[assignment]
    end.write_eof()
    assert rec.calls == ["close"]
    end = TransportEnd(Pump("c", "/s"), CLIENT, 1024)
    rec = Recorder(fail=BrokenPipeError)
    end.transport = rec  # type: ignore[assignment]
    end.write_eof()
    assert rec.calls == ["write_eof"]


def test_abort_resets_a_tcp_peer() -> None:
    """abort() on a TCP socket sends a reset (SO_LINGER 0), so the peer cannot take it for a
    clean end of stream."""

    async def run() -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        peer = socket.create_connection(listener.getsockname())
        relay, _ = listener.accept()
        listener.close()
        peer.setblocking(False)
        transport, end = await _wrap(Pump("c", "/s"), TARGET, relay, 1024)
        try:
            end.abort()
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(asyncio.get_running_loop().sock_recv(peer, 10), TIMEOUT)
        finally:
            transport.abort()
            peer.close()

    asyncio.run(run())
