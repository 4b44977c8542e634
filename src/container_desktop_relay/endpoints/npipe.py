"""Windows named-pipe endpoint: a Proactor pipe server with a restrictive DACL and half-close.

asyncio's own ``start_serving_pipe`` creates pipes with a NULL security descriptor (the default
pipe ACL lets Everyone read), accepts remote clients, keeps a single spare instance, and its
transports cannot half-close. This listener keeps asyncio's proactor transports but creates
each pipe instance itself, the way go-winio (Docker's pipe library) does:

* ``PIPE_TYPE_MESSAGE | PIPE_READMODE_BYTE | PIPE_REJECT_REMOTE_CLIENTS``; a zero-length
  message is the half-close (go-winio's ``CloseWrite``) in both directions: reading one is
  EOF (the proactor delivers it as ``eof_received``), and :class:`PipeEnd` writes one once its
  outgoing buffer has drained.
* ``FILE_FLAG_FIRST_PIPE_INSTANCE`` on the first instance, so a name that another process
  already serves is refused instead of shared.
* A DACL from SDDL: SYSTEM, Administrators and the current user only.
* ``backlog`` instances always posted in ``ConnectNamedPipe``; each accepted one is replaced
  before the connection is handed on, so a burst of clients finds free instances rather than
  ``ERROR_PIPE_BUSY``.

This module uses three private proactor entry points (``_proactor.accept_pipe``,
``_proactor.send``, ``_make_duplex_pipe_transport``) and the transport's drain waiter; they
are the same ones ``start_serving_pipe`` and ``sendfile`` use, in CPython 3.11 and 3.12.
"""

from __future__ import annotations

import _winapi
import asyncio
import ctypes
import sys
from asyncio import windows_utils
from collections.abc import Callable
from ctypes import wintypes
from typing import Any

if sys.platform != "win32":  # pragma: no cover - the switch in endpoints.pipes guards this
    raise ImportError("named pipes are Windows-only")

from container_desktop_relay.endpoints.pipename import pipe_path, pipe_sddl
from container_desktop_relay.endpoints.winsec import SecurityAttributes, current_user_sid, read_dacl
from container_desktop_relay.ends import TransportEnd
from container_desktop_relay.errors import ListenError
from container_desktop_relay.log import get_logger

__all__ = [
    "DEFAULT_BACKLOG",
    "NamedPipeListener",
    "PipeEnd",
    "pipe_instances",
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
_REFILL_RETRY = 0.1  # seconds before retrying when creating an instance failed


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


class PipeEnd(TransportEnd):
    """A named-pipe connection as one side of a pump; half-close is a zero-length message."""

    def __init__(self, pump: Any, side: Any, buffer_size: int) -> None:
        super().__init__(pump, side, buffer_size)
        self._eof_task: asyncio.Task[None] | None = None
        self._close_when_sent = False

    def eof_received(self) -> bool:
        """EOF is a zero-length message (half-close) or the client's close; only the first
        keeps the pipe open for writing."""
        super().eof_received()
        return not self._client_gone()

    def _client_gone(self) -> bool:
        pipe = self.transport.get_extra_info("pipe") if self.transport is not None else None
        if pipe is None or pipe.handle is None:
            return True
        try:
            _winapi.PeekNamedPipe(pipe.handle, 0)
        except OSError:  # ERROR_BROKEN_PIPE: the client closed its handle
            return True
        return False

    def write_eof_unsupported(self, transport: Any) -> None:
        """Write go-winio's CloseWrite, a zero-length message, after everything queued."""
        self._eof_task = asyncio.get_running_loop().create_task(
            self._send_zero_length_message(transport), name="npipe-write-eof"
        )

    async def _send_zero_length_message(self, transport: Any) -> None:
        try:
            waiter = transport._make_empty_waiter()
            try:
                await waiter
            finally:
                transport._reset_empty_waiter()
            if not transport.is_closing():
                loop = asyncio.get_running_loop()
                await loop._proactor.send(transport.get_extra_info("pipe"), b"")  # type: ignore[attr-defined]
        except OSError as exc:  # the client is gone; connection_lost follows
            log.debug("npipe_write_eof_failed", extra={"error": str(exc)})
            transport.abort()
        finally:
            if self._close_when_sent:
                transport.close()

    def close(self) -> None:
        """Close after flushing, including a zero-length message still being written."""
        if self._eof_task is not None and not self._eof_task.done():
            self._close_when_sent = True
            return
        super().close()


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
        self._loop._make_duplex_pipe_transport(pipe, protocol, extra={"addr": self.address})


async def start_npipe_listener(
    path: str,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    *,
    buffer_size: int,
    backlog: int = DEFAULT_BACKLOG,
    sddl: str | None = None,
) -> NamedPipeListener:
    """Serve the pipe ``path`` (``npipe:////./pipe/NAME`` or ``\\\\.\\pipe\\NAME``).

    ``protocol_factory`` makes one protocol per accepted client (normally a :class:`PipeEnd`);
    ``buffer_size`` sizes the pipe's kernel buffers; ``sddl`` overrides the access policy.

    Raises:
        ListenError: not a Proactor loop, a bad or taken name, or creation failed.
    """
    loop = asyncio.get_running_loop()
    if not hasattr(loop, "_proactor"):
        raise ListenError("named pipes need asyncio's Proactor event loop (Windows' default)")
    listener = NamedPipeListener(loop, pipe_path(path), protocol_factory,
                                 buffer_size=buffer_size, backlog=backlog, sddl=sddl)
    listener.start()
    return listener
