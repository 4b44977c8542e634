"""The connection registry: ids, the capacity check, observers, drain and close-all."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from container_desktop_relay.core.registry import ConnectionRegistry


class FakePump:
    """What the registry uses of a pump: ``closing`` and ``close``."""

    def __init__(self, name: str = "p") -> None:
        self.name = name
        self.closing = False
        self.closed: list[tuple[str, bool]] = []

    def close(self, reason: str, *, abort: bool = False) -> None:
        self.closing = True
        self.closed.append((reason, abort))


class Recorder:
    """An observer that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def connection_started(self, pump: Any, forward: str, opened: bool) -> None:
        self.calls.append(("started", pump, forward, opened))

    def connection_opened(self, pump: Any) -> None:
        self.calls.append(("opened", pump))

    def connection_finished(self, pump: Any, opened: bool) -> None:
        self.calls.append(("finished", pump, opened))


def registry(limit: int = 2, *, count_closing: bool = False) -> ConnectionRegistry:
    return ConnectionRegistry(limit, count_closing=count_closing)


def test_ids_count_from_one_with_the_prefix() -> None:
    """One counter per registry: c-1, c-2, ...; a prefix names another series."""
    reg = registry()
    assert [reg.new_id() for _ in range(3)] == ["c-1", "c-2", "c-3"]
    assert ConnectionRegistry(1, count_closing=True, prefix="x").new_id() == "x-1"


def test_limit_counts_live_connections() -> None:
    """Room until ``limit`` connections are live; a finished one frees its slot."""
    reg = registry(2)
    first, second = FakePump(), FakePump()
    assert reg.has_room() and reg.in_use() == 0
    reg.add(first)  # type: ignore[arg-type]
    assert reg.has_room() and reg.in_use() == 1
    reg.add(second)  # type: ignore[arg-type]
    assert not reg.has_room() and reg.in_use() == 2
    reg.finished(first)  # type: ignore[arg-type]
    assert reg.has_room() and reg.in_use() == 1
    assert reg.active == {second}


def test_zero_limit_admits_nothing() -> None:
    """A limit of 0 leaves no room at all."""
    assert not registry(0).has_room()


def test_closing_connections_free_the_server_slot_not_the_client_slot() -> None:
    """The server does not count a connection already closing; the client does, so it frees a
    slot only after the server did."""
    server, client = registry(1), registry(1, count_closing=True)
    for reg in (server, client):
        pump = FakePump()
        reg.add(pump)  # type: ignore[arg-type]
        assert not reg.has_room()
        pump.closing = True
        assert reg.in_use() == (0 if reg is server else 1)
    assert server.has_room() and not client.has_room()


def test_pending_opens_and_reserved_slots_count() -> None:
    """A pending target connect and a reserved (probe) slot each hold a slot; both are given
    back."""
    reg = registry(2)
    reg.add(FakePump())  # type: ignore[arg-type]
    reg.begin_open()
    assert reg.pending == 1 and reg.in_use() == 2 and not reg.has_room()
    reg.end_open()
    assert reg.pending == 0 and reg.has_room()
    with reg.reserve():
        assert reg.reserved == 1 and reg.in_use() == 2 and not reg.has_room()
    assert reg.reserved == 0 and reg.has_room()
    with pytest.raises(RuntimeError), reg.reserve():
        raise RuntimeError("probe failed")
    assert reg.reserved == 0


def test_observers_hear_each_connection_once() -> None:
    """started (with the forward and whether the target side is open), opened once, finished
    once with whether it had opened; a second finish is ignored."""
    reg, seen = registry(5), Recorder()
    reg.observers.append(seen)
    ready, waiting, refused = FakePump("ready"), FakePump("waiting"), FakePump("refused")
    reg.add(ready, "unix:///a.sock")  # type: ignore[arg-type]
    reg.add(waiting, opened=False)  # type: ignore[arg-type]
    reg.add(refused, opened=False)  # type: ignore[arg-type]
    reg.opened(waiting)  # type: ignore[arg-type]
    reg.opened(waiting)  # type: ignore[arg-type]
    reg.opened(ready)  # type: ignore[arg-type]
    for pump in (ready, waiting, refused, refused):
        reg.finished(pump)  # type: ignore[arg-type]
    assert seen.calls == [
        ("started", ready, "unix:///a.sock", True),
        ("started", waiting, "", False),
        ("started", refused, "", False),
        ("opened", waiting),
        ("finished", ready, True),
        ("finished", waiting, True),
        ("finished", refused, False),
    ]
    assert not reg.active
    seen.calls.clear()
    reg.add(refused)  # type: ignore[arg-type]  # a finished pump leaves nothing behind
    reg.finished(refused)  # type: ignore[arg-type]
    assert seen.calls == [("started", refused, "", True), ("finished", refused, True)]


@pytest.mark.asyncio
async def test_drain_stops_admitting_and_waits_for_connections_and_pending_opens() -> None:
    """A drain admits nothing new and returns 0 once the last connection and pending open
    are over, not before."""
    reg = registry(5)
    pump = FakePump()
    reg.add(pump)  # type: ignore[arg-type]
    reg.begin_open()
    drain = asyncio.create_task(reg.drain(10.0))
    await asyncio.sleep(0)
    assert not reg.admitting and not reg.has_room()
    reg.finished(pump)  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert not drain.done()  # the pending open still runs
    reg.end_open()
    assert await asyncio.wait_for(drain, 5.0) == 0


@pytest.mark.asyncio
async def test_drain_does_not_wait_for_reserved_slots() -> None:
    """A probe's reserved slot never becomes a connection: a drain returns at once."""
    reg = registry(5)
    with reg.reserve():
        assert await asyncio.wait_for(reg.drain(10.0), 5.0) == 0


@pytest.mark.asyncio
async def test_drain_times_out_with_the_number_left() -> None:
    """Connections still live when the timeout runs out are counted, not waited for."""
    reg = registry(5)
    for _ in range(2):
        reg.add(FakePump())  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await reg.drain(0.05) == 2
    assert loop.time() - started >= 0.04


@pytest.mark.asyncio
async def test_end_open_alone_ends_a_drain_and_a_connection_left_keeps_it() -> None:
    """A drain wakes only when nothing is live and nothing pending."""
    reg = registry(5)
    reg.begin_open()
    reg.add(FakePump())  # type: ignore[arg-type]
    drain = asyncio.create_task(reg.drain(0.2))
    await asyncio.sleep(0)
    reg.end_open()
    await asyncio.sleep(0)
    assert not drain.done()
    assert await drain == 1


def test_close_all_aborts_every_connection_and_stops_admitting() -> None:
    """close_all aborts each live connection with the reason (default "shutdown")."""
    reg = registry(5)
    pumps = [FakePump(), FakePump()]
    for pump in pumps:
        reg.add(pump)  # type: ignore[arg-type]
    reg.close_all()
    assert [p.closed for p in pumps] == [[("shutdown", True)], [("shutdown", True)]]
    assert reg.admitting is False and not reg.has_room()
    other = registry(5)
    pump = FakePump()
    other.add(pump)  # type: ignore[arg-type]
    other.close_all("test over")
    assert pump.closed == [("test over", True)]
