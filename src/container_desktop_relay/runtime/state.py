"""Readiness and liveness of one role, as /ready, /health and the tid file see it."""

from __future__ import annotations

import asyncio
import time

__all__ = ["SERVER_UNAVAILABLE", "SOCKET_MEMORY", "RoleState"]

#: The reason prefix (and state) when the client's spawned server keeps exiting at once.
SERVER_UNAVAILABLE = "server_unavailable"
#: Seconds a target socket's failure is remembered without another attempt (it is retried
#: every ~2 s while a client probes it): within it a repeat is quiet, after it news again.
SOCKET_MEMORY = 60.0


class RoleState:
    """Whether the role can serve a new connection now, and why not when it cannot."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.ready = False
        self.reason = "starting"
        self.draining = False
        #: client role: whether the SSH link is up (the server role has no link of its own).
        self.link_up: bool | None = None
        self.changed = asyncio.Event()
        #: target sockets whose last attempt failed: path -> (reason, monotonic time)
        self.unreachable: dict[str, tuple[str, float]] = {}

    def set_ready(self, reason: str = "ready") -> None:
        """Mark the role ready (unless it is draining)."""
        if self.draining:
            return
        self.ready = True
        self.reason = reason
        self._notify()

    def set_not_ready(self, reason: str) -> None:
        """Mark the role unable to serve, with ``reason``."""
        self.ready = False
        self.reason = reason
        self._notify()

    def start_draining(self) -> None:
        """Shutdown began: not ready from now on."""
        self.draining = True
        self.set_not_ready("shutting down")

    def socket_failed(self, path: str, reason: str, now: float | None = None) -> bool:
        """Record that target socket ``path`` could not be used, for ``reason``.

        Returns:
            Whether this is news worth a warning: the first failure of ``path``, another
            reason than last time, or a failure after :data:`SOCKET_MEMORY` seconds without
            one. A socket retried while it stays missing is logged once, then quietly.
        """
        now = time.monotonic() if now is None else now
        last = self.unreachable.get(path)
        self.unreachable[path] = (reason, now)
        return last is None or last[0] != reason or now - last[1] > SOCKET_MEMORY

    def socket_reached(self, path: str) -> None:
        """Target socket ``path`` was used: forget its failure."""
        if self.unreachable:  # per connection: nothing to do in the common case
            self.unreachable.pop(path, None)

    def unreachable_sockets(self, now: float | None = None) -> dict[str, str]:
        """Target sockets that failed within the last :data:`SOCKET_MEMORY` seconds (and have
        not been reached since): path -> reason."""
        now = time.monotonic() if now is None else now
        return {path: reason for path, (reason, when) in sorted(self.unreachable.items())
                if now - when <= SOCKET_MEMORY}

    @property
    def condition(self) -> str:
        """One word for the state: ``ready``, ``draining``, ``server_unavailable`` (the spawned
        server keeps exiting at once), or ``not_ready``."""
        if self.ready:
            return "ready"
        if self.draining:
            return "draining"
        if self.reason.startswith(SERVER_UNAVAILABLE):
            return SERVER_UNAVAILABLE
        return "not_ready"

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()
