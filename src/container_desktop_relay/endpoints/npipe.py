"""Windows named-pipe endpoint: a Proactor pipe server with a restrictive DACL and half-close.

asyncio's own ``start_serving_pipe`` creates pipes with a NULL security descriptor (the default
pipe ACL lets Everyone read), accepts remote clients, keeps a single spare instance, and its
transports cannot half-close. This listener keeps asyncio's proactor transports but creates
each pipe instance itself, the way go-winio (Docker's pipe library) does:

* ``PIPE_TYPE_MESSAGE | PIPE_READMODE_BYTE | PIPE_REJECT_REMOTE_CLIENTS``; a zero-length
  message is the half-close (go-winio's ``CloseWrite``) in both directions: reading one is
  EOF (the proactor delivers it as ``eof_received``), and :class:`PipeTransport` writes one
  for ``write_eof()`` once the data queued before it is written. So the client's ordinary
  ``TransportEnd`` half-closes a pipe exactly as it half-closes a Unix socket.
* ``FILE_FLAG_FIRST_PIPE_INSTANCE`` on the first instance, and a count of the name's
  instances (Wine ignores the flag): a name another process serves is refused, not shared.
* A DACL from SDDL: SYSTEM, Administrators and the current user only.
* ``backlog`` instances always posted in ``ConnectNamedPipe``; each accepted one is replaced
  before the connection is handed on, so a burst of clients finds free instances rather than
  ``ERROR_PIPE_BUSY``.

Private asyncio parts used, the same ones ``start_serving_pipe`` uses (CPython 3.11-3.13):
``_proactor.accept_pipe``, ``_proactor.send`` and the ``_ProactorDuplexPipeTransport`` class,
whose write loop, ``_eof_received``, ``_force_close`` and ``_call_connection_lost`` (guarded by
``_called_connection_lost``, so calling it early is safe) :class:`PipeTransport` uses.
"""

from __future__ import annotations

import _winapi
import asyncio
import ctypes
import sys
from asyncio import proactor_events, windows_utils
from collections.abc import Callable
from ctypes import wintypes
from typing import TYPE_CHECKING, Any

from container_desktop_relay.endpoints.winsec import SecurityAttributes, current_user_sid, read_dacl
from container_desktop_relay.errors import ListenError
from container_desktop_relay.log import get_logger

# endpoints.open_listener imports it on Windows only (elsewhere `import _winapi` fails first);
# as an assert, it also tells the type checker that the rest of the module is Windows code.
assert sys.platform == "win32", "named pipes are Windows-only"

__all__ = [
    "DEFAULT_BACKLOG",
    "NamedPipeListener",
    "PipeTransport",
    "pipe_instances",
    "pipe_sddl",
    "start_npipe_listener",
]

log = get_logger(__name__)

PIPE_READMODE_BYTE = 0x0
PIPE_REJECT_REMOTE_CLIENTS = 0x8
ERROR_ACCESS_DENIED = 5
ERROR_PIPE_BUSY = 231
#: Instances kept waiting in ConnectNamedPipe; a burst of up to this many clients never sees
#: ERROR_PIPE_BUSY. Replacing taken instances one by one does not keep up with a burst (with
#: 64 waiting, 57 of 300 simultaneous clients were refused under Wine). A waiting instance
#: costs a handle and a pending overlapped operation, about 1 KB.
DEFAULT_BACKLOG = 512
#: Largest read buffer of a connection (asyncio's default); smaller when --buffer-size is.
MAX_READ_BUFFER = 64 * 1024
_REFILL_RETRY = 0.1  # seconds before retrying when creating an instance failed
_PIPE_PREFIX = "\\\\.\\pipe\\"


def pipe_sddl(user_sid: str) -> str:
    """The pipe's security descriptor: protected DACL, full access for SYSTEM, Admins, the user.

    The policy of Podman's win-sshproxy (gvisor-tap-vsock): no other account may open it.
    """
    return f"D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;{user_sid})"


_kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
_kernel32.GetNamedPipeHandleStateW.argtypes = [
    wintypes.HANDLE, wintypes.LPDWORD, wintypes.LPDWORD, wintypes.LPDWORD, wintypes.LPDWORD,
    wintypes.LPWSTR, wintypes.DWORD]
_kernel32.GetNamedPipeHandleStateW.restype = wintypes.BOOL


def pipe_instances(handle: int) -> int:
    """How many instances (waiting or connected, any process) the pipe of ``handle`` has."""
    count = wintypes.DWORD()
    if not _kernel32.GetNamedPipeHandleStateW(handle, None, ctypes.byref(count), None, None,
                                              None, 0):
        raise ctypes.WinError(ctypes.get_last_error())
    return count.value


class PipeTransport(proactor_events._ProactorDuplexPipeTransport):
    """asyncio's duplex pipe transport, plus half-close as go-winio does it.

    ``write_eof()`` sends a zero-length message once everything queued before it is written
    (asyncio's own pipe transport cannot half-close). A zero-length read is EOF as before,
    also when the client has in fact closed its handle: what it wrote before is delivered;
    the answer, which it can no longer read, then ends the connection.
    """

    _eof_requested = False
    _eof_pending = False
    _client_closed = False  # the client closed its handle (not a CloseWrite)

    if TYPE_CHECKING:  # the private asyncio state used below, which typeshed does not declare
        _loop: Any  # a ProactorEventLoop; its _proactor is private too
        _sock: windows_utils.PipeHandle
        _closing: bool
        _conn_lost: int
        _buffer: bytearray | None

        def _fatal_error(self, exc: BaseException, message: str = ...) -> None: ...
        def _force_close(self, exc: BaseException | None) -> None: ...
        def _call_connection_lost(self, exc: BaseException | None) -> None: ...

    def can_write_eof(self) -> bool:
        """Pipes created by this listener are message-type: they can half-close."""
        return True

    def write_eof(self) -> None:
        """Half-close: a zero-length message after the data already queued."""
        if self._closing or self._eof_requested:
            return
        self._eof_requested = True
        self._eof_pending = True
        if self._write_fut is None:
            self._send_zero_length_message()

    def _loop_writing(self, f: Any = None, data: Any = None) -> None:
        super()._loop_writing(f, data)  # type: ignore[misc]  # private: not in typeshed
        if self._eof_pending and self._write_fut is None and not self._buffer:
            self._send_zero_length_message()

    def _send_zero_length_message(self) -> None:
        self._eof_pending = False
        if self._conn_lost:
            return
        try:
            # Completion runs _loop_writing, which finishes a close() requested meanwhile.
            self._write_fut = self._loop._proactor.send(self._sock, b"")
        except OSError as exc:
            self._fatal_error(exc, "Fatal error writing EOF on pipe transport")
            return
        self._write_fut.add_done_callback(self._loop_writing)

    def _eof_received(self) -> None:
        # A zero-length read is a CloseWrite, or the client closed its handle (the pipe is
        # then broken). Either way everything the client wrote was read and is passed on,
        # followed by EOF, exactly as for a half-close: closing here would abort what is
        # still on its way to the target. A client that is gone can take no answer, so the
        # first answer byte ends the connection (see write()).
        self._client_closed = _client_gone(self._sock)
        super()._eof_received()  # type: ignore[misc]  # private: not in typeshed

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; refused after :meth:`write_eof`, as on sockets. Once the client has
        closed its handle, the answer cannot be delivered: the transport fails at once with
        :class:`BrokenPipeError` (the protocol's ``connection_lost`` says so)."""
        if self._eof_requested:
            raise RuntimeError("write_eof() already called")
        if self._client_closed and data:
            if not self._closing:
                exc = BrokenPipeError(
                    "the pipe client closed its handle; the answer cannot be delivered")
                self._force_close(exc)
                # Tell the protocol now, not on the next loop turn: an end of stream from
                # the other side that is handled meanwhile must not look like a clean end.
                self._call_connection_lost(exc)  # the scheduled call is then a no-op
            return
        super().write(data)


def _client_gone(pipe: windows_utils.PipeHandle) -> bool:
    """Whether the client end of ``pipe`` is closed (a read of 0 bytes was not a half-close)."""
    if pipe.handle is None:
        return True
    try:
        _winapi.PeekNamedPipe(pipe.handle, 0)
    except OSError:  # ERROR_BROKEN_PIPE
        return True
    return False


class NamedPipeListener:
    """Serves one pipe name: creates instances, accepts clients, makes transports."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        address: str,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        *,
        buffer_size: int,
        backlog: int = DEFAULT_BACKLOG,
        sddl: str | None = None,
    ) -> None:
        self._loop: Any = loop
        self.address = address
        self._factory = protocol_factory
        self._buffer_size = buffer_size
        self.backlog = max(backlog, 1)
        self.sddl = sddl if sddl is not None else pipe_sddl(current_user_sid())
        self._sa: SecurityAttributes | None = None
        self._free: dict[windows_utils.PipeHandle, asyncio.Future[Any] | None] = {}
        self._closed = False
        self._refill_pending = False
        #: Clients accepted so far.
        self.accepted = 0

    # ----------------------------------------------------------------- public
    def start(self) -> None:
        """Create the first instance (refusing a name in use), then post the backlog.

        Raises:
            ListenError: the name exists, is invalid, or the pipe cannot be created.
        """
        self._sa = SecurityAttributes(self.sddl)
        taken = ListenError(f"named pipe {self.address} already exists (owned by another process)")
        try:
            first = self._create(first=True)
        except OSError as exc:
            self._sa.free()
            self._closed = True
            if getattr(exc, "winerror", None) in (ERROR_ACCESS_DENIED, ERROR_PIPE_BUSY):
                raise taken from None
            raise ListenError(f"cannot create named pipe {self.address}: {exc}") from None
        # Windows refuses a taken name above; Wine ignores FILE_FLAG_FIRST_PIPE_INSTANCE, so
        # count the name's instances too: ours must be the only one.
        if pipe_instances(first.handle) != 1:
            first.close()
            self._sa.free()
            self._closed = True
            raise taken
        self._post(first)
        self._fill()
        log.info("npipe_listening", extra={"endpoint": self.address, "backlog": self.backlog})

    def close(self) -> None:
        """Stop accepting: cancel and close every waiting instance; connections go on."""
        if self._closed:
            return
        self._closed = True
        for pipe, fut in list(self._free.items()):
            if fut is not None:
                fut.cancel()
            pipe.close()
        self._free.clear()
        if self._sa is not None:
            self._sa.free()

    def is_serving(self) -> bool:
        """Whether the listener still accepts clients."""
        return not self._closed

    @property
    def waiting(self) -> int:
        """Instances currently waiting for a client."""
        return len(self._free)

    def dacl(self) -> str:
        """The DACL of the pipe as Windows stores it, read back from a waiting instance."""
        for pipe in self._free:
            return read_dacl(pipe.handle)
        raise ListenError(f"named pipe {self.address} has no waiting instance to inspect")

    # --------------------------------------------------------------- instances
    def _create(self, *, first: bool = False) -> windows_utils.PipeHandle:
        assert self._sa is not None
        flags = _winapi.PIPE_ACCESS_DUPLEX | _winapi.FILE_FLAG_OVERLAPPED
        if first:
            flags |= _winapi.FILE_FLAG_FIRST_PIPE_INSTANCE
        handle = _winapi.CreateNamedPipe(
            self.address,
            flags,
            _winapi.PIPE_TYPE_MESSAGE | PIPE_READMODE_BYTE | _winapi.PIPE_WAIT
            | PIPE_REJECT_REMOTE_CLIENTS,
            _winapi.PIPE_UNLIMITED_INSTANCES,
            self._buffer_size,
            self._buffer_size,
            _winapi.NMPWAIT_WAIT_FOREVER,
            self._sa.address,
        )
        return windows_utils.PipeHandle(handle)

    def _post(self, pipe: windows_utils.PipeHandle) -> None:
        """Wait for a client on ``pipe`` (ConnectNamedPipe, overlapped)."""
        self._free[pipe] = None
        try:
            fut = self._loop._proactor.accept_pipe(pipe)
        except OSError as exc:  # a client connected and left before we looked
            del self._free[pipe]
            pipe.close()
            log.debug("npipe_accept_failed", extra={"endpoint": self.address, "error": str(exc)})
            return
        self._free[pipe] = fut
        fut.add_done_callback(lambda f, p=pipe: self._accepted(p, f))

    def _fill(self) -> None:
        """Post new instances until ``backlog`` are waiting."""
        self._refill_pending = False
        while not self._closed and len(self._free) < self.backlog:
            try:
                pipe = self._create()
            except OSError as exc:
                log.error("npipe_create_failed",
                          extra={"endpoint": self.address, "error": str(exc)})
                if not self._refill_pending:
                    self._refill_pending = True
                    self._loop.call_later(_REFILL_RETRY, self._fill)
                return
            self._post(pipe)

    def _accepted(self, pipe: windows_utils.PipeHandle, fut: asyncio.Future[Any]) -> None:
        self._free.pop(pipe, None)
        if self._closed or fut.cancelled():
            pipe.close()
            return
        exc = fut.exception()
        if exc is not None:
            pipe.close()
            log.debug("npipe_accept_failed", extra={"endpoint": self.address, "error": str(exc)})
            self._fill()
            return
        self._fill()  # replace it before handing this one on: no window without a free instance
        self.accepted += 1
        try:
            protocol = self._factory()
        except Exception as exc:
            pipe.close()
            log.error("npipe_protocol_failed", extra={"endpoint": self.address, "error": str(exc)})
            return
        # asyncio's default read buffer is a fixed 64 KiB per connection; --buffer-size bounds
        # what a connection holds, here as in the pump.
        # typeshed types this private class's pipe as a socket and its protocol as a
        # StreamReaderProtocol; asyncio's own start_serving_pipe passes these same two
        PipeTransport(self._loop, pipe, protocol,  # type: ignore[arg-type]
                      extra={"addr": self.address},
                      buffer_size=min(self._buffer_size, MAX_READ_BUFFER))


async def start_npipe_listener(
    path: str,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    *,
    buffer_size: int,
    backlog: int = DEFAULT_BACKLOG,
    sddl: str | None = None,
) -> NamedPipeListener:
    """Serve the pipe ``path`` (``\\\\.\\pipe\\NAME``, as ``endpoints.parse_endpoint`` gives it).

    ``protocol_factory`` makes one protocol per accepted client; ``buffer_size`` sizes the
    pipe's kernel buffers; ``sddl`` overrides the access policy.

    Raises:
        ListenError: not a Proactor loop, a bad or taken name, or creation failed.
    """
    loop = asyncio.get_running_loop()
    if not hasattr(loop, "_proactor"):
        raise ListenError("named pipes need asyncio's Proactor event loop (Windows' default)")
    if not path.lower().startswith(_PIPE_PREFIX) or len(path) == len(_PIPE_PREFIX):
        raise ListenError(f"{path!r} is not a local named pipe (\\\\.\\pipe\\NAME)")
    listener = NamedPipeListener(loop, path, protocol_factory,
                                 buffer_size=buffer_size, backlog=backlog, sddl=sddl)
    listener.start()
    return listener
