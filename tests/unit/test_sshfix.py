"""The asyncssh layer in isolation: guards, modes, Corked, congestion pause, paused-drain work."""

from __future__ import annotations

import asyncio
import compileall
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncssh
import pytest
from asyncssh import channel as ssh_channel
from asyncssh import connection as ssh_connection
from asyncssh.constants import MSG_CHANNEL_WINDOW_ADJUST
from asyncssh.packet import UInt32

from container_desktop_relay.ssh import patches as sshfix
from container_desktop_relay.ssh import tune as sshtune
from container_desktop_relay.ssh.patches import flowcontrol
from container_desktop_relay.ssh.patches.guard import fingerprint, lookup


@pytest.fixture
def mode_all() -> Iterator[None]:
    """Every patch applied; every patch back in place afterwards, whatever the test did."""
    sshtune.apply("all")
    yield
    sshtune.apply("none")
    sshtune.apply("all")


# ------------------------------------------------------------------------- guards
def test_every_patch_matches_the_installed_asyncssh(mode_all: None) -> None:
    """The fingerprints were taken from the asyncssh the lock installs: all apply."""
    rep = sshfix.report()
    assert rep["not_applied"] == {}, (
        f"asyncssh {asyncssh.__version__} changed functions the patches replace: re-port "
        f"them to it (the relay runs without them, slower): {rep['not_applied']}")
    assert rep["active"] == [p.name for p in sshfix.PATCHES]
    assert {p["kind"] for p in sshfix.catalog()} == {"correctness", "speed"}


def test_modes_select_and_none_restores_asyncssh(mode_all: None) -> None:
    """correctness installs only those; none puts every asyncssh function back."""
    assert sshtune.apply("correctness")["active"] == ["window-credit", "congestion-pause",
                                                      "close-drain"]
    assert sshtune.channel_window() == sshtune.DEFAULT_WINDOW  # no large windows without speed
    rep = sshtune.apply("none")
    assert rep["active"] == [] and set(rep["not_applied"]) == {p.name for p in sshfix.PATCHES}
    for patch in sshfix.PATCHES:
        assert patch.mismatch() == ""  # asyncssh's own functions, fingerprints intact
        for t in patch.targets:
            if t.new is not None and not t.added:
                assert lookup(t.owner, t.name) is not t.new, t.label
    assert "process_open" not in vars(ssh_channel.SSHUNIXChannel)  # inherited again
    assert sshtune.apply("all")["not_applied"] == {}
    assert sshtune.channel_window() == sshtune.CHANNEL_WINDOW


def test_changed_target_skips_only_its_patch_and_warns_once(
        mode_all: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A replaced function that changed upstream: its patch is skipped, the rest apply, one
    warning names asyncssh's version and the skipped patch with the reason."""
    baseline = set(sshtune.apply("all")["active"])
    sshtune.apply("none")

    def _deliver_data(self: Any, data: bytes, datatype: Any) -> None:  # "upstream changed it"
        self._session.data_received(data, datatype)

    monkeypatch.setattr(ssh_channel.SSHChannel, "_deliver_data", _deliver_data)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="container_desktop_relay.ssh.patches"):
        rep = sshtune.apply("all")
        sshtune.apply("all")  # same mode again: nothing new
    assert "window-credit" not in rep["active"]
    assert "SSHChannel._deliver_data changed" in rep["not_applied"]["window-credit"]
    assert set(rep["active"]) == baseline - {"window-credit"}
    assert sshtune.channel_window() == sshtune.DEFAULT_WINDOW  # large windows need the credit fix
    warned = [r for r in caplog.records if r.getMessage() == "asyncssh_patches_not_applied"]
    assert len(warned) == 1
    assert warned[0].asyncssh == asyncssh.__version__  # type: ignore[attr-defined]
    assert set(warned[0].not_applied) == set(rep["not_applied"])  # type: ignore[attr-defined]
    sshtune.apply("none")  # uninstall while the stand-in is in place, before monkeypatch undo


def test_bad_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="all, correctness, none"):
        sshtune.apply("some")


def test_fingerprints_need_no_source(tmp_path: Path) -> None:
    """Frozen builds carry bytecode only: with asyncssh as .pyc alone (getsource fails), every
    target's fingerprint is computed, and the same patches apply as with the source."""
    expected = sshtune.apply("all")["active"]
    assert expected
    pyc = tmp_path / "asyncssh"
    shutil.copytree(Path(asyncssh.__file__).parent, pyc,
                    ignore=shutil.ignore_patterns("__pycache__"))
    assert compileall.compile_dir(str(pyc), legacy=True, quiet=1)
    for source in pyc.rglob("*.py"):
        source.unlink()
    code = (
        "import inspect, asyncssh, sys\n"
        "from asyncssh import channel\n"
        "assert asyncssh.__file__.endswith('.pyc'), asyncssh.__file__\n"
        "try:\n"
        "    inspect.getsource(channel.SSHChannel._deliver_data)\n"
        "    sys.exit('source found')\n"
        "except (OSError, TypeError):\n"
        "    pass\n"
        "from container_desktop_relay.ssh import tune as sshtune\n"
        "rep = sshtune.apply('all')\n"
        f"assert rep['active'] == {expected!r}, rep\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_fingerprint_sees_a_changed_function() -> None:
    """A different name, constant or argument changes the fingerprint; a docstring does not."""
    def a(self: Any, n: int) -> int:
        """One."""
        return self.x + n + 1

    def b(self: Any, n: int) -> int:
        """Two."""
        return self.x + n + 1

    def c(self: Any, n: int) -> int:
        return self.y + n + 1

    def d(self: Any, n: int) -> int:
        return self.x + n + 2

    def e(self: Any, n: int, m: int = 0) -> int:
        return self.x + n + 1

    assert fingerprint(a) == fingerprint(b)
    assert len({fingerprint(f) for f in (a, c, d, e)}) == 4


# ------------------------------------------------------------------------- Corked
class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))


def _chan() -> Any:
    send = ssh_connection.SSHConnection._send  # the corking _send, once applied
    conn = SimpleNamespace(_cdr_cork=None, _transport=_Transport())
    conn._send = lambda data: send(conn, data)
    return SimpleNamespace(_conn=conn)


def test_packets_inside_leave_in_one_write_in_order(mode_all: None) -> None:
    chan = _chan()
    with sshtune.Corked(chan):
        chan._conn._send(b"eof-")
        chan._conn._send(bytearray(b"close"))
        assert chan._conn._transport.writes == []
    assert chan._conn._transport.writes == [b"eof-close"]
    chan._conn._send(b"after")
    assert chan._conn._transport.writes == [b"eof-close", b"after"]


def test_nested_cork_flushes_once_at_the_outer_end(mode_all: None) -> None:
    chan = _chan()
    with sshtune.Corked(chan):
        chan._conn._send(b"a")
        with sshtune.Corked(chan):
            chan._conn._send(b"b")
        assert chan._conn._transport.writes == []
    assert chan._conn._transport.writes == [b"ab"]


def test_nothing_sent_writes_nothing(mode_all: None) -> None:
    chan = _chan()
    with sshtune.Corked(chan):
        pass
    assert chan._conn._transport.writes == []


def test_cork_without_the_patch_sends_as_usual(mode_all: None) -> None:
    sshtune.apply("none")
    conn = SimpleNamespace(_send=lambda data: writes.append(data))
    writes: list[bytes] = []
    with sshtune.Corked(SimpleNamespace(_conn=conn)):
        conn._send(b"a")
        conn._send(b"b")
    assert writes == [b"a", b"b"]


# --------------------------------------------------------------- congestion pause
class _Session:
    def __init__(self) -> None:
        self.paused = False
        self.data: list[bytes] = []

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def data_received(self, data: bytes, datatype: Any) -> None:
        assert type(data) is bytes
        self.data.append(data)


def test_channel_opened_on_a_congested_connection_starts_paused(mode_all: None) -> None:
    """A new channel joins a connection-level pause, and the resume reaches it."""
    conn = SimpleNamespace(_cdr_write_paused=False, _channels={})
    calm = SimpleNamespace(_conn=conn, _session=_Session(), _send_paused=False)
    flowcontrol.join_connection_pause(calm)
    assert not calm._session.paused
    conn._cdr_write_paused = True
    late = SimpleNamespace(_conn=conn, _session=_Session(), _send_paused=False)
    conn._channels[7] = late
    flowcontrol.join_connection_pause(late)
    assert late._session.paused
    ssh_connection.SSHConnection.resume_writing(conn)  # type: ignore[arg-type]
    assert not late._session.paused and not conn._cdr_write_paused


# ------------------------------------------------------------- draining a paused channel
class _CountingList(list):  # type: ignore[type-arg]
    """A channel's receive queue that counts the entries anything iterates over."""

    visited = 0

    def __iter__(self) -> Any:
        for item in super().__iter__():
            _CountingList.visited += 1
            yield item


class _Conn:
    """What an SSHChannel needs of its connection: a channel number, a logger, packets out."""

    def __init__(self) -> None:
        self.logger = asyncssh.logging.logger
        self.sent: list[tuple[int, tuple[bytes, ...]]] = []

    def add_channel(self, chan: Any) -> int:
        return 0

    def send_packet(self, pkttype: int, *args: bytes, handler: Any = None) -> None:
        self.sent.append((pkttype, args))


WINDOW = 4 * 1024 * 1024


def _paused_channel() -> tuple[Any, _Conn, _Session]:
    conn = _Conn()
    chan: Any = ssh_channel.SSHUNIXChannel(conn, asyncio.new_event_loop(), None, "strict",
                                           WINDOW, 32768)
    chan._loop.close()
    chan._send_state = chan._recv_state = "open"
    chan._send_chan = 1
    session = _Session()
    chan._session = session
    chan._recv_paused = False
    chan.pause_reading()
    chan._recv_buf = _CountingList()
    return chan, conn, session


def test_draining_many_small_packets_is_linear(mode_all: None) -> None:
    """100,000 one-byte packets queued while paused: a few coalesced entries, each looked at
    a bounded number of times on resume, every byte delivered in order, credit only for
    delivered bytes."""
    chan, conn, session = _paused_channel()
    packets = 100_000
    for i in range(packets):
        chan._accept_data(bytes([i % 251]))
    entries = len(chan._recv_buf)
    assert entries <= 2 * packets // flowcontrol.COALESCE_LIMIT + 1, entries
    _CountingList.visited = 0
    chan.resume_reading()
    assert _CountingList.visited <= entries
    assert len(session.data) <= entries
    assert b"".join(session.data) == bytes(i % 251 for i in range(packets))
    credit = sum(int.from_bytes(args[0], "big") for kind, args in conn.sent
                 if kind == MSG_CHANNEL_WINDOW_ADJUST)
    assert chan._recv_window == WINDOW - packets + credit <= WINDOW
    assert conn.sent == [] or chan._recv_window == WINDOW


def test_credit_is_granted_only_for_delivered_bytes(mode_all: None) -> None:
    """Resuming, then pausing again after the first chunk: credit for that chunk only.

    While data is queued for a lagging reader, credit goes back per LAG_CREDIT_STEP delivered
    (so the sender sees progress), never for bytes still queued."""
    chan, conn, session = _paused_channel()
    chunk = b"x" * 131072
    for _ in range(24):  # 3 MiB queued: under half the window is left
        chan._accept_data(chunk)
    session.data_received = lambda data, datatype: (session.data.append(data),  # type: ignore[method-assign]
                                                    chan.pause_reading())
    chan.resume_reading()  # delivers one chunk, then the session pauses again
    assert len(session.data) == 1
    assert len(chunk) >= flowcontrol.LAG_CREDIT_STEP
    assert [(kind, args[-1][-4:]) for kind, args in conn.sent] == [
        (MSG_CHANNEL_WINDOW_ADJUST, UInt32(len(chunk)))]  # (channel number, then the credit)
    assert chan._recv_window + 23 * len(chunk) == WINDOW  # what is queued is not credited


def test_draining_visits_each_queued_entry_once(mode_all: None) -> None:
    """Packets too big to coalesce stay one entry each; resuming looks at each entry once
    (a running byte count, not a re-sum of the queue per delivered packet)."""
    chan, _, session = _paused_channel()
    size = flowcontrol.COALESCE_LIMIT * 5 // 8
    for i in range(100):  # 4 MB, just under the window
        chan._accept_data(bytes([i]) * size)
    assert len(chan._recv_buf) == 100
    _CountingList.visited = 0
    chan.resume_reading()
    assert _CountingList.visited <= 100
    assert [d[0] for d in session.data] == list(range(100))
    assert WINDOW // 2 <= chan._recv_window <= WINDOW  # credit re-opened as delivered
