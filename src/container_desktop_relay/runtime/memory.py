"""Give freed heap memory back to the OS when a role goes idle (glibc malloc_trim)."""

from __future__ import annotations

import asyncio
import ctypes
import sys
from collections.abc import Callable

from container_desktop_relay.log import get_logger

__all__ = ["IdleTrimmer", "trim"]

log = get_logger(__name__)

_libc: ctypes.CDLL | None = None
if sys.platform == "linux":
    try:
        # The C library is already loaded: dlopen(NULL) finds it without find_library's
        # ldconfig subprocess (start-up time).
        _libc = ctypes.CDLL(None)
        _libc.malloc_trim  # noqa: B018 - glibc only; musl has none
    except (OSError, AttributeError):
        _libc = None


def trim() -> bool:
    """Return free heap pages to the OS; False where the C library cannot."""
    if _libc is None:
        return False
    return bool(_libc.malloc_trim(0))


class IdleTrimmer:
    """Calls :func:`trim` once a role has had no active connections for ``delay`` seconds.

    After a burst of connections, glibc keeps the freed buffers in its heap; without this the
    process keeps its peak RSS forever.
    """

    def __init__(self, is_idle: Callable[[], bool], delay: float = 2.0) -> None:
        self.is_idle = is_idle
        self.delay = delay
        self._handle: asyncio.TimerHandle | None = None

    def connection_finished(self) -> None:
        """Note that a connection ended; schedule a trim if the role is now idle."""
        if self._handle is not None or not self.is_idle():
            return
        self._handle = asyncio.get_running_loop().call_later(self.delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        if self.is_idle():
            log.info("memory_trimmed", extra={"released": trim()})

    def cancel(self) -> None:
        """Drop a pending trim."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
