"""Which port serves which observability endpoint of a role, worked out once.

``/health`` and ``/ready`` share one port, ``/metrics`` has its own; unset, each derives from
the role's SSH port (server +58 / +68, client +59 / +69: 20080, 20090, 20081, 20091 for the
default 20022). Equal ports (including both 0) are one server carrying all three paths. The
relay (:mod:`~container_desktop_relay.observability.observe`), ``status`` and ``doctor`` all
read this plan, so they agree on where to listen and where to ask.
"""

from __future__ import annotations

from dataclasses import dataclass

from container_desktop_relay.config import Config

__all__ = ["HEALTH", "METRICS", "PATHS", "EndpointPorts", "endpoint_ports", "query_host"]

HEALTH = "health"
METRICS = "metrics"
#: the URL paths of each endpoint group, /ready first (it names the relay that answers)
PATHS = {HEALTH: ("/ready", "/health"), METRICS: ("/metrics",)}
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def query_host(listen_host: str) -> str:
    """Where to ask endpoints that listen on ``listen_host``: loopback for a wildcard."""
    return _WILDCARDS.get(listen_host, listen_host)


@dataclass(frozen=True, slots=True)
class EndpointPorts:
    """The observability ports of one role as configured."""

    role: str
    #: the SSH port the defaults derive from (the server's own, the one a client connects to)
    ssh_port: int
    health_port: int
    metrics_port: int
    health_enabled: bool
    metrics_enabled: bool
    #: whether the port was set (flag, environment or file) rather than derived
    health_explicit: bool
    metrics_explicit: bool

    def port(self, group: str) -> int:
        """The port of ``group`` (:data:`HEALTH` or :data:`METRICS`)."""
        return self.health_port if group == HEALTH else self.metrics_port

    def explicit(self, group: str) -> bool:
        """Whether the port of ``group`` was set explicitly."""
        return self.health_explicit if group == HEALTH else self.metrics_explicit

    def enabled_groups(self) -> list[str]:
        """The endpoint groups this role serves, health first."""
        return ([HEALTH] if self.health_enabled else []) + (
            [METRICS] if self.metrics_enabled else [])

    def servers(self) -> list[tuple[int, frozenset[str]]]:
        """(port, groups) of each HTTP server the role starts, equal ports merged."""
        merged: dict[int, set[str]] = {}
        for group in self.enabled_groups():
            merged.setdefault(self.port(group), set()).add(group)
        return [(port, frozenset(groups)) for port, groups in merged.items()]

    def urls(self) -> list[tuple[int, str, bool]]:
        """(port, path, explicit) of every enabled endpoint: /ready, /health, /metrics."""
        return [(self.port(group), path, self.explicit(group))
                for group in self.enabled_groups() for path in PATHS[group]]


def endpoint_ports(config: Config, role: str) -> EndpointPorts:
    """The observability ports of ``role`` under ``config``."""
    return EndpointPorts(
        role=role,
        ssh_port=config.ssh_port(role),
        health_port=config.effective_health_port(role),
        metrics_port=config.effective_metrics_port(role),
        health_enabled=config.effective_health_enabled(role),
        metrics_enabled=config.effective_metrics_enabled(role),
        health_explicit=config.health_check_port is not None,
        metrics_explicit=config.metrics_port is not None,
    )
