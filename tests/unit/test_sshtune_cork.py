"""sshtune.Corked: packets sent inside leave in one write, in order; nesting is harmless."""

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
