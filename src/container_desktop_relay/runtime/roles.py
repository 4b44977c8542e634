"""Compose each role from its parts: endpoint + SSH + pump + lifecycle (+ observability)."""

from __future__ import annotations

from typing import Any

from container_desktop_relay.config import Config
from container_desktop_relay.observability.metrics import Metrics
from container_desktop_relay.runtime.app import Role, run_loop, serve
from container_desktop_relay.runtime.memory import IdleTrimmer
from container_desktop_relay.runtime.state import RoleState
from container_desktop_relay.ssh.server import RelayServer

__all__ = ["run_client", "run_server", "trim_when_idle"]


def trim_when_idle(role: Role) -> None:
    """Hand freed memory back to the OS whenever ``role`` has no live connection left."""
    registry = role.registry
    trimmer = IdleTrimmer(lambda: not registry.active)
    role.metrics.listeners.append(trimmer.connection_finished)


def _observability(config: Config, role: str) -> list[Any]:
    """The /health + /metrics extra, imported only when enabled (prometheus-client: ~3 MB)."""
    if not (config.effective_health_enabled(role) or config.effective_metrics_enabled(role)):
        return []
    from container_desktop_relay.observability.observe import observability_extra

    return [observability_extra(config)]


def run_server(config: Config) -> int:
    """Run the server role until shutdown; returns the exit status."""

    async def main() -> int:
        state = RoleState("server")
        server = RelayServer(config, Metrics("server"), state)
        trim_when_idle(server)
        return await serve(server, config, extras=_observability(config, "server"))

    return run_loop(main)


def run_client(config: Config) -> int:
    """Run the client role until shutdown; returns the exit status."""
    from container_desktop_relay.runtime.tidfile import (
        check_writable,
        remove_stale_tid_file,
        tid_file_extra,
    )
    from container_desktop_relay.ssh.client import RelayClient

    if config.tid_path:
        remove_stale_tid_file(config.path("tid_path"))  # before anything else can fail
        check_writable(config.path("tid_path"))

    async def main() -> int:
        state = RoleState("client")
        client = RelayClient(config, Metrics("client"), state)
        trim_when_idle(client)
        extras = _observability(config, "client")
        if config.tid_path:
            extras.append(tid_file_extra(config.path("tid_path")))
        try:
            return await serve(client, config, extras=extras)
        finally:
            await client.aclose()

    return run_loop(main)
