"""Readiness and liveness of one role, as /ready, /health and the tid file see it."""

from __future__ import annotations

import asyncio

__all__ = ["SERVER_UNAVAILABLE", "RoleState"]

#: The reason prefix (and state) when the client's spawned server keeps exiting at once.
SERVER_UNAVAILABLE = "server_unavailable"


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
