"""sshtune pieces in isolation: Corked output, channels joining a connection-level pause."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from container_desktop_relay import sshtune


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))


class _Conn:
    """The two attributes the patched ``_send`` uses."""

    _send = sshtune._send

    def __init__(self) -> None:
        self._cdr_cork: list[bytes] | None = None
        self._transport = _Transport()


def _chan() -> Any:
    assert sshtune.apply()
    return SimpleNamespace(_conn=_Conn())


def test_packets_inside_leave_in_one_write_in_order() -> None:
    chan = _chan()
    with sshtune.Corked(chan):
        chan._conn._send(b"eof-")
        chan._conn._send(bytearray(b"close"))
        assert chan._conn._transport.writes == []
    assert chan._conn._transport.writes == [b"eof-close"]
    chan._conn._send(b"after")
    assert chan._conn._transport.writes == [b"eof-close", b"after"]


def test_nested_cork_flushes_once_at_the_outer_end() -> None:
    chan = _chan()
    with sshtune.Corked(chan):
        chan._conn._send(b"a")
        with sshtune.Corked(chan):
            chan._conn._send(b"b")
        assert chan._conn._transport.writes == []
    assert chan._conn._transport.writes == [b"ab"]


def test_nothing_sent_writes_nothing() -> None:
    chan = _chan()
    with sshtune.Corked(chan):
        pass
    assert chan._conn._transport.writes == []


class _Session:
    def __init__(self) -> None:
        self.paused = False

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False


def test_channel_opened_on_a_congested_connection_starts_paused() -> None:
    """A new channel joins a connection-level pause, and the resume reaches it."""
    conn = SimpleNamespace(_cdr_write_paused=False, _channels={})
    calm = SimpleNamespace(_conn=conn, _session=_Session(), _send_paused=False)
    sshtune._join_connection_pause(calm)
    assert not calm._session.paused
    conn._cdr_write_paused = True
    late = SimpleNamespace(_conn=conn, _session=_Session(), _send_paused=False)
    conn._channels[7] = late
    sshtune._join_connection_pause(late)
    assert late._session.paused
    sshtune._conn_resume_writing(conn)
    assert not late._session.paused and not conn._cdr_write_paused
