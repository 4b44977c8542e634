"""Unix-socket listener: mode 0600, never steals a live socket, replaces a stale one, cleans up."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
import sys
from collections.abc import Callable

from container_desktop_relay.errors import ListenError, UnusableEndpoint
from container_desktop_relay.log import get_logger

__all__ = ["UnixListener", "probe_socket", "start_unix_listener"]

log = get_logger(__name__)
PROBE_TIMEOUT = 1.0


class UnixListener:
    """A listening Unix socket that removes its own socket file (and only its own) on close."""

    def __init__(self, path: str, server: asyncio.AbstractServer, ident: tuple[int, int]) -> None:
        self.path = path
        self.server = server
        self._ident = ident

    def close(self) -> None:
        """Stop accepting; unlink the socket file unless another process has replaced it."""
        self.server.close()
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                os.unlink(self.path)


def probe_socket(path: str, timeout: float = PROBE_TIMEOUT) -> str:
    """Whether something accepts connections on the socket file ``path``.

    Returns:
        "live" (a listener answered or its backlog is full), "stale" (nothing listens there),
        or a short reason the owner could not be determined.
    """
    if sys.platform == "win32":
        raise NotImplementedError("Python has no AF_UNIX on Windows")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except ConnectionRefusedError:
        return "stale"
    except FileNotFoundError:
        return "stale"
    except (BlockingIOError, TimeoutError):
        return "live"  # a full backlog still means somebody owns it
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return "live"
        return exc.strerror or str(exc)
    finally:
        sock.close()
    return "live"


def _clear_path(path: str) -> None:
    """Remove a stale socket file at ``path``; refuse anything live or not a socket."""
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise UnusableEndpoint(f"cannot listen on {path}: directory {parent} does not exist; "
                               "create it or choose a socket path in an existing directory")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ListenError(f"cannot use socket path {path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(
            f"cannot listen on {path}: a file that is not a socket is in the way; "
            "remove it or choose another path"
        )
    verdict = probe_socket(path)
    if verdict == "live":
        raise ListenError(
            f"cannot listen on {path}: another process is already listening on it "
            "(refusing to take over a live socket)"
        )
    if verdict != "stale":
        raise ListenError(
            f"cannot listen on {path}: cannot tell whether its owner is alive ({verdict})"
        )
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ListenError(
            f"cannot remove stale socket {path}: {exc.strerror or exc}"
        ) from None
    log.info("stale_socket_removed", extra={"endpoint": path})


def _bind_private(path: str) -> socket.socket:
    """A listening socket bound at ``path`` with mode 0600 from the moment it exists."""
    if sys.platform == "win32":
        raise NotImplementedError("Python has no AF_UNIX on Windows")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(
                f"cannot listen on {path}: another process bound it at the same moment"
            ) from None
        raise ListenError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    return sock


async def start_unix_listener(
    path: str,
    protocol_factory: Callable[[], asyncio.Protocol],
    *,
    buffer_size: int,
) -> UnixListener:
    """Listen on the Unix socket ``path`` (mode 0600), replacing a stale socket file.

    ``buffer_size`` is unused here (each protocol sets its own write limits); it is accepted so
    every listener has the same signature.

    Raises:
        ListenError: a live listener owns ``path``, a non-socket file is in the way, the
            directory is missing or not writable, or the event loop has no Unix sockets.
    """
    del buffer_size
    _clear_path(path)
    sock = _bind_private(path)
    st = os.lstat(path)
    loop = asyncio.get_running_loop()
    try:
        # asyncio re-listens with its own backlog (100): keep the kernel's maximum, or a burst
        # of clients gets EAGAIN on connect.
        server = await loop.create_unix_server(protocol_factory, sock=sock,
                                               backlog=socket.SOMAXCONN)
    except (OSError, NotImplementedError) as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise ListenError(f"cannot listen on {path}: {exc}") from None
    log.info("endpoint_listening", extra={"endpoint": f"unix://{path}"})
    return UnixListener(path, server, (st.st_dev, st.st_ino))
