"""One plan of which port serves which observability endpoint, for observe, status, doctor."""

from __future__ import annotations

from container_desktop_relay.config import load_config
from container_desktop_relay.observability.ports import (
    HEALTH,
    METRICS,
    endpoint_ports,
    query_host,
)


def test_defaults_derive_from_the_ssh_port_per_role() -> None:
    """Server +58/+68 and on; client +59/+69 and off; the client's SSH port is the URL's."""
    config = load_config({"port": "20022"}, environ={})
    server = endpoint_ports(config, "server")
    assert (server.health_port, server.metrics_port, server.ssh_port) == (20080, 20090, 20022)
    assert server.enabled_groups() == [HEALTH, METRICS]
    assert not server.health_explicit and not server.metrics_explicit
    assert server.servers() == [(20080, frozenset({HEALTH})), (20090, frozenset({METRICS}))]
    assert server.urls() == [(20080, "/ready", False), (20080, "/health", False),
                             (20090, "/metrics", False)]
    client = endpoint_ports(load_config(
        {"ssh_connection": "ssh://me@127.0.0.1:20122/run/x.sock"}, environ={}), "client")
    assert (client.health_port, client.metrics_port, client.ssh_port) == (20181, 20191, 20122)
    assert client.enabled_groups() == [] and client.servers() == [] and client.urls() == []


def test_explicit_equal_ports_are_one_server() -> None:
    """Ports set to the same value (0 included) merge into one server carrying both groups;
    an explicit port is marked as such, a disabled group is left out."""
    config = load_config({"health_check_port": "0", "metrics_port": "0"}, environ={})
    plan = endpoint_ports(config, "server")
    assert plan.health_explicit and plan.metrics_explicit
    assert plan.explicit(HEALTH) and plan.explicit(METRICS) and plan.port(METRICS) == 0
    assert plan.servers() == [(0, frozenset({HEALTH, METRICS}))]
    only_metrics = endpoint_ports(load_config(
        {"health_check_enabled": "false", "metrics_port": "9100"}, environ={}), "server")
    assert only_metrics.servers() == [(9100, frozenset({METRICS}))]
    assert only_metrics.urls() == [(9100, "/metrics", True)]


def test_wildcard_listen_addresses_are_asked_on_loopback() -> None:
    """0.0.0.0 and an empty host are asked on 127.0.0.1, :: on ::1; others as they are."""
    assert [query_host(h) for h in ("0.0.0.0", "", "::", "10.0.0.2")] == [
        "127.0.0.1", "127.0.0.1", "::1", "10.0.0.2"]
