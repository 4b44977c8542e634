"""The Prometheus collector over Metrics: names, labels, values, histograms, both formats."""

from __future__ import annotations

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from container_desktop_relay.core.pump import Pump
from container_desktop_relay.observability.metrics import DURATION_BUCKETS, Metrics
from container_desktop_relay.observability.prometheus import make_registry, render
from container_desktop_relay.runtime.state import RoleState
from obs_helpers import Clock, finish, open_connection

CDR_FAMILIES = {
    "cdr_build_info": "gauge",
    "cdr_up": "gauge",
    "cdr_ready": "gauge",
    "cdr_draining": "gauge",
    "cdr_uptime_seconds": "gauge",
    "cdr_asyncio_tasks": "gauge",
    "cdr_connections": "counter",
    "cdr_active_connections": "gauge",
    "cdr_bytes_read": "counter",
    "cdr_bytes_written": "counter",
    "cdr_errors": "counter",
    "cdr_connection_duration_seconds": "histogram",
    "cdr_channel_open_latency_seconds": "histogram",
}


def scrape(metrics: Metrics, state: RoleState, accept: str = "") -> dict[str, dict[str, object]]:
    """Render and parse with the official parser: {family: {"type", "samples"}}."""
    payload, content_type = render(make_registry(metrics, state, process=False), accept)
    parse = openmetrics_families if "openmetrics" in content_type else \
        text_string_to_metric_families
    return {f.name: {"type": f.type, "samples": f.samples} for f in parse(payload.decode())}


def value(families: dict[str, dict[str, object]], name: str, **labels: str) -> float:
    """The value of sample ``name`` whose labels include ``labels``."""
    for family in families.values():
        for sample in family["samples"]:  # type: ignore[attr-defined]
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    raise KeyError((name, labels))


def fed() -> tuple[Metrics, RoleState]:
    """Metrics with closed and live connections, errors of every kind, latencies."""
    clock = Clock()
    metrics = Metrics("server", clock=clock)
    finish(open_connection(metrics, 100, 200))
    finish(open_connection(metrics, 1, 2))
    open_connection(metrics, 10, 20)
    metrics.channel_opened(0.0002)
    metrics.channel_opened(0.003)
    metrics.channel_opened(7.0)
    metrics.error("connection", "a")
    metrics.error("connection", "b")
    metrics.error("socket", "c")
    clock.now += 42.5
    state = RoleState("server")
    state.set_ready("listening")
    return metrics, state


def test_names_types_and_role_label() -> None:
    """Exactly the cdr_* families with conventional names and types, each labelled by role."""
    metrics, state = fed()
    families = scrape(metrics, state)
    assert {n: f["type"] for n, f in families.items()} == CDR_FAMILIES
    for family in families.values():
        for sample in family["samples"]:  # type: ignore[attr-defined]
            assert sample.labels["role"] == "server"


def test_values_match_the_json_snapshot() -> None:
    """Counters and gauges carry the same numbers as Metrics.snapshot()."""
    metrics, state = fed()
    f = scrape(metrics, state)
    snap = metrics.snapshot()
    assert value(f, "cdr_connections_total") == snap.total_connections == 3
    assert value(f, "cdr_active_connections") == snap.active_connections == 1
    assert value(f, "cdr_bytes_read_total") == snap.total_bytes_read == 111
    assert value(f, "cdr_bytes_written_total") == snap.total_bytes_written == 222
    assert value(f, "cdr_errors_total", kind="connection") == 2
    assert value(f, "cdr_errors_total", kind="socket") == 1
    assert value(f, "cdr_errors_total", kind="other") == 0
    assert value(f, "cdr_uptime_seconds") == 42.5
    assert value(f, "cdr_up") == 1 and value(f, "cdr_ready") == 1
    assert value(f, "cdr_draining") == 0


def test_histograms_are_cumulative_with_sum_and_count() -> None:
    """Bucket counts are cumulative and end in +Inf == count; sums are the observed totals."""
    metrics, state = fed()
    f = scrape(metrics, state)
    name = "cdr_channel_open_latency_seconds"
    assert value(f, name + "_bucket", le="0.00025") == 1
    assert value(f, name + "_bucket", le="0.005") == 2
    assert value(f, name + "_bucket", le="5.0") == 2
    assert value(f, name + "_bucket", le="+Inf") == value(f, name + "_count") == 3
    assert abs(value(f, name + "_sum") - 7.0032) < 1e-9
    name = "cdr_connection_duration_seconds"
    buckets = [s for s in f[name]["samples"] if s.name.endswith("_bucket")]  # type: ignore
    assert len(buckets) == len(DURATION_BUCKETS) + 1
    assert value(f, name + "_count") == 2  # only finished connections


def test_state_gauges_follow_readiness_and_link() -> None:
    """cdr_ready/cdr_draining follow the state; cdr_link_up exists only for the client."""
    metrics = Metrics("client")
    state = RoleState("client")
    state.link_up = False
    f = scrape(metrics, state)
    assert value(f, "cdr_ready", role="client") == 0
    assert value(f, "cdr_link_up", role="client") == 0
    state.link_up = True
    state.set_ready("link up")
    state.start_draining()
    f = scrape(metrics, state)
    assert value(f, "cdr_link_up") == 1 and value(f, "cdr_ready") == 0
    assert value(f, "cdr_draining") == 1
    assert "cdr_link_up" not in scrape(*fed())


def test_openmetrics_negotiated_and_parsable() -> None:
    """An OpenMetrics Accept yields OpenMetrics (with # EOF) that its parser reads."""
    metrics, state = fed()
    registry = make_registry(metrics, state)
    payload, content_type = render(registry, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert payload.endswith(b"# EOF\n")
    f = scrape(metrics, state, "application/openmetrics-text")
    assert value(f, "cdr_connections_total") == 3
    payload, content_type = render(registry, "text/plain")
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert b"process_" in payload  # the standard process collector rides along (Linux)


def test_forward_connections_are_counted_per_forward() -> None:
    """A client with forwards: cdr_forward_connections_total per local endpoint; none without."""
    metrics, state = Metrics("client"), RoleState("client")
    assert "cdr_forward_connections" not in scrape(metrics, state)
    for forward in ("unix:///a.sock", "unix:///b.sock", "unix:///a.sock"):
        metrics.connection_started(Pump("c", "/t.sock"), forward, True)
    families = scrape(metrics, state)
    assert families["cdr_forward_connections"]["type"] == "counter"
    assert value(families, "cdr_forward_connections_total", forward="unix:///a.sock") == 2
    assert value(families, "cdr_forward_connections_total", forward="unix:///b.sock") == 1
