"""Task-free channel lifecycle: opens confirmed and completed in the call, EOF+CLOSE corked.

The docker CLI opens a connection per command, so what a channel costs to open and close
matters (docs/performance.md, new-connection cost). Each is a
:class:`~container_desktop_relay.ssh.patches.guard.Patch`:

``task-free-accept``
    An accepted channel open always finished in a new task, one event-loop pass later, even
    when the owner answered with a ready session. A ready session is confirmed at once, in
    the call that received the open request (an awaitable one still gets asyncssh's task).
``task-free-open``
    Opening a channel took two tasks and a chain of coroutines. :func:`open_unix_channel`
    sends the same CHANNEL_OPEN and runs a callback from the confirmation (or failure)
    itself. It replaces nothing; it is guarded by the functions whose work it repeats. A
    failure in the session factory, ``connection_made`` or the callback fails that channel
    only (it is closed and the callback runs once), never the SSH connection.
``corked-close``
    The EOF and CLOSE that end a forwarded connection leave in one ``send()``
    (:class:`Corked`), as OpenSSH's output buffer sends them.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import asyncssh
from asyncssh import channel as _channel
from asyncssh import connection as _connection
from asyncssh.constants import MSG_CHANNEL_OPEN
from asyncssh.packet import SSHPacket, String, UInt32

from container_desktop_relay.log import get_logger
from container_desktop_relay.ssh.patches.flowcontrol import join_connection_pause
from container_desktop_relay.ssh.patches.guard import Patch, Target

__all__ = ["FINGERPRINTS", "PATCHES", "Corked", "OpenCallback", "open_unix_channel"]

log = get_logger(__name__)

OpenCallback = Callable[[BaseException | None], None]

_Channel = _channel.SSHChannel
_Forward = _channel.SSHForwardChannel
_Unix = _channel.SSHUNIXChannel
_Connection = _connection.SSHConnection
_EMPTY_STRING = String(b"")
# asyncssh's own function, kept before anything is replaced
_ORIG_PROCESS_OPEN = _Channel.process_open
_tasks: set[asyncio.Task[None]] = set()

#: Fingerprints of asyncssh 2.24.1's functions (guard.fingerprint; the same on 3.11 and 3.12).
FINGERPRINTS = {
    "SSHChannel._cleanup": "67bbb3418554c3d1",
    "SSHChannel._finish_open_request": "69399797fb5ff48f",
    "SSHChannel._flush_recv_buf": "f47e627b21d60f3a",
    "SSHChannel._open": "3d05629a4aa80a1b",
    "SSHChannel.process_open_confirmation": "642e265b664fe739",
    "SSHChannel.process_open_failure": "928ba11e5d8758d5",
    "SSHConnection._send": "a64038b3e65d9eb5",
    "SSHForwardChannel._finish_open_request": "bb28302a0a300652",
    "SSHForwardChannel._open_forward": "d3dca60a91271ba0",
    "SSHUNIXChannel.connect": "2b53449149a32bc2",
    "SSHUNIXChannel.process_open": "0459b933f058e406",
}


# ------------------------------------------------------------------ accepting
def _unix_process_open(self: Any, send_chan: int, send_window: int, send_pktsize: int,
                       session: Any) -> None:
    """SSHUNIXChannel.process_open: a ready session is confirmed now, not in a new task."""
    if inspect.isawaitable(session):
        _ORIG_PROCESS_OPEN(self, send_chan, send_window, send_pktsize, session)
        return
    self._send_chan = send_chan
    self._send_window = send_window
    self._send_pktsize = send_pktsize
    # SSHChannel._finish_open_request, then SSHForwardChannel's additions, without the await.
    conn = self._conn
    if not conn:  # defensive: the open arrived on this connection, so it is still there
        session.connection_lost(asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED,
                                                          "SSH connection closed"))
        self._loop.call_soon(self._cleanup)
        return
    chan, self._session = self._wrap_session(session)
    conn.send_channel_open_confirmation(send_chan, self._recv_chan, self._recv_window,
                                        self._recv_pktsize)
    self._send_state = "open"
    self._recv_state = "open"
    self._session.connection_made(chan)
    if self._session is not None:
        self._session.session_started()
        join_connection_pause(self)
        self.resume_reading()


# -------------------------------------------------------------------- opening
def _fail_channel(chan: Any, what: str, exc: BaseException) -> None:
    """Close just this channel after ``what`` raised.

    A session that failed to attach (``what`` is "session") is not called again; after a
    failing ``on_open`` the attached session hears of the close as usual (connection_lost).
    """
    log.error("channel_open_callback_failed",
              extra={"stage": what, "error": f"{type(exc).__name__}: {exc}"})
    if what == "session":
        chan._session = None
    chan.close()


class _OpenWaiter:
    """Stands in for the future asyncssh awaits while a channel opens: calls back instead.

    The callback runs exactly once: the waiter detaches itself from the channel before
    calling out, so asyncssh's ``_cleanup`` cannot report the same open a second time.
    """

    __slots__ = ("_chan", "_factory", "_on_open")

    def __init__(self, chan: Any, factory: Callable[[], Any], on_open: OpenCallback) -> None:
        self._chan = chan
        self._factory = factory
        self._on_open = on_open

    def cancelled(self) -> bool:
        return False

    def set_result(self, packet: SSHPacket) -> None:
        # SSHForwardChannel._open_forward after its await; reading starts at once instead of
        # in a _start_reading task (the session could pause it in connection_made, as there).
        chan = self._chan
        packet.check_end()  # malformed: a protocol error ends the connection, as in asyncssh
        chan._open_waiter = None
        try:
            session = chan._session = self._factory()
            session.connection_made(chan)
            session.session_started()
        except Exception as exc:  # the owner's code: fail this channel, not the connection
            _fail_channel(chan, "session", exc)
            self._call(exc)
            return
        join_connection_pause(chan)
        if chan._recv_paused == "starting":
            chan._recv_paused = False
            chan._flush_recv_buf()
        try:
            self._on_open(None)
        except Exception as exc:
            _fail_channel(chan, "on_open", exc)

    def set_exception(self, exc: BaseException) -> None:
        self._chan._open_waiter = None
        self._call(exc)

    def _call(self, error: BaseException) -> None:
        _report_failure(self._on_open, error)


def _report_failure(on_open: OpenCallback, error: BaseException) -> None:
    """``on_open(error)``; an exception from it is logged (the channel is already gone)."""
    try:
        on_open(error)
    except Exception as exc:
        log.error("channel_open_callback_failed",
                  extra={"stage": "on_open", "error": f"{type(exc).__name__}: {exc}"})


def open_unix_channel(conn: asyncssh.SSHClientConnection, path: str,
                      session_factory: Callable[[], Any], on_open: OpenCallback, *,
                      window: int, max_pktsize: int, fast: bool) -> Any:
    """Open a ``direct-streamlocal@openssh.com`` channel to ``path``.

    ``on_open(None)`` runs once the peer confirmed it (the session from ``session_factory``
    is attached and reading), ``on_open(error)`` when it refused, the connection closed (an
    :class:`asyncssh.ChannelOpenError`) or the session could not be attached (that channel
    is closed). It runs exactly once. Same packets as ``create_unix_connection``; without
    ``fast`` (``task-free-open`` not applied) that public coroutine runs in a task.
    Returns the opening channel, or None on that fallback.
    """
    if not fast:
        _open_in_task(conn, path, session_factory, on_open, window, max_pktsize)
        return None
    chan: Any = conn.create_unix_channel(window=window, max_pktsize=max_pktsize)
    chan.set_extra_info(local_peername="", remote_peername=path)
    chan._open_waiter = _OpenWaiter(chan, session_factory, on_open)
    conn.send_packet(MSG_CHANNEL_OPEN, String(b"direct-streamlocal@openssh.com"),
                     UInt32(chan._recv_chan), UInt32(chan._recv_window),
                     UInt32(chan._recv_pktsize), String(path), _EMPTY_STRING, UInt32(0),
                     handler=chan)
    return chan


def _open_in_task(conn: asyncssh.SSHClientConnection, path: str,
                  session_factory: Callable[[], Any], on_open: OpenCallback, window: int,
                  max_pktsize: int) -> None:
    """What ``create_unix_connection`` does, in a task, but closing the channel on failure."""
    async def opening() -> None:
        chan = conn.create_unix_channel(window=window, max_pktsize=max_pktsize)
        try:
            await chan.connect(session_factory, path)
        except Exception as exc:  # refused, connection closed, or the owner's session failed
            chan.close()  # nothing to do after a refusal; else just this channel ends
            _report_failure(on_open, exc)
            return
        try:
            on_open(None)
        except Exception as exc:
            _fail_channel(chan, "on_open", exc)

    _tasks.add(task := asyncio.get_running_loop().create_task(opening()))
    task.add_done_callback(_tasks.discard)


# --------------------------------------------------------------------- corking
def _send(self: Any, data: bytes) -> None:
    """SSHConnection._send: collected while corked (see :class:`Corked`), else written."""
    cork = self._cdr_cork
    if cork is not None:
        cork.append(data)
        return
    if self._transport:
        try:  # noqa: SIM105 - per packet: no context manager
            self._transport.write(data)
        except ConnectionError:
            pass


class Corked:
    """``with Corked(chan):`` packets the channel's connection sends inside leave in one write.

    Order is kept (everything the connection sends goes through ``_send``); nested use, and
    a process without ``corked-close``, just send as usual.
    """

    __slots__ = ("_conn", "_parts")

    def __init__(self, chan: Any) -> None:
        self._conn: Any = chan._conn if CORKED.active else None
        self._parts: list[bytes] | None = None

    def __enter__(self) -> None:
        conn = self._conn
        if conn is not None and conn._cdr_cork is None:
            self._parts = conn._cdr_cork = []

    def __exit__(self, *exc: object) -> None:
        parts = self._parts
        if parts is None:
            return
        conn = self._conn
        conn._cdr_cork = None
        if parts:
            conn._send(parts[0] if len(parts) == 1 else b"".join(parts))


def _target(owner: Any, label: str, name: str, new: Any = None) -> Target:
    return Target(owner, name, label, FINGERPRINTS[label], new)


CORKED = Patch("corked-close", "speed", "the EOF and CLOSE ending a channel leave in one send()",
               [_target(_Connection, "SSHConnection._send", "_send", _send),
                Target(_Connection, "_cdr_cork", "SSHConnection._cdr_cork", "", None,
                       added=True)])
OPEN = Patch("task-free-open", "speed",
             "a channel opens with a callback from its confirmation, without tasks",
             [_target(_Channel, "SSHChannel._open", "_open"),
              _target(_Forward, "SSHForwardChannel._open_forward", "_open_forward"),
              _target(_Unix, "SSHUNIXChannel.connect", "connect"),
              _target(_Channel, "SSHChannel.process_open_confirmation",
                      "process_open_confirmation"),
              _target(_Channel, "SSHChannel.process_open_failure", "process_open_failure"),
              _target(_Channel, "SSHChannel._cleanup", "_cleanup"),
              _target(_Channel, "SSHChannel._flush_recv_buf", "_flush_recv_buf")])
PATCHES = [
    Patch("task-free-accept", "speed",
          "a ready session is confirmed in the call that received the channel open",
          [_target(_Unix, "SSHUNIXChannel.process_open", "process_open", _unix_process_open),
           _target(_Channel, "SSHChannel._finish_open_request", "_finish_open_request"),
           _target(_Forward, "SSHForwardChannel._finish_open_request",
                   "_finish_open_request")]),
    OPEN,
    CORKED,
]
