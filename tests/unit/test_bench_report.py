"""bench report: chain objects carry exactly the issue's keys; skipped chains are not faked."""

from __future__ import annotations

import math

from container_desktop_relay.commands.bench.command import Plan
from container_desktop_relay.commands.bench.report import (
    CHAIN_KEYS,
    ChainResult,
    document,
    table,
    verdicts,
)
from container_desktop_relay.commands.bench.workloads import percentile


def _measured(name: str, *, rss: bool = True) -> ChainResult:
    r = ChainResult(name, has_rss=rss)
    r.upload_mb_s = [100.0, 300.0, 200.0]
    r.download_mb_s = [100.0, 100.0, 400.0]
    r.latency_p50_us = [10.0, 30.0, 20.0]
    r.latency_p99_us = [90.0, 99.0, 95.0]
    r.connect_p50_us = [5.0, 7.0, 6.0]
    r.concurrent_conns = 1000
    r.concurrent_errors = [0, 2, 0]
    if rss:
        r.rss_base_mb = [40.0, 42.0, 41.0]
        r.rss_per_conn_kb = [8.0, 6.0, 7.0]
        r.rss_base_each_mb = [[20.0, 20.0], [21.0, 21.0], [22.0, 19.0]]
    return r


def test_figures_have_exactly_the_issue_keys_and_medians() -> None:
    """Measured chains: exact key set, medians over rounds, worst error count."""
    fig = _measured("relay").figures()
    assert sorted(fig) == sorted(CHAIN_KEYS)
    assert fig["throughput_mb_s"] == 200.0  # median of the per-round (up + down) / 2
    assert fig["latency_p50_us"] == 20.0
    assert fig["concurrent_errors"] == 2
    assert fig["rss_per_conn_kb"] == 7.0
    direct = _measured("direct", rss=False).figures()
    assert sorted(direct) == sorted(k for k in CHAIN_KEYS if not k.startswith("rss_"))


def test_skipped_and_failed_chains_carry_no_figures() -> None:
    """A skipped openssh chain says so; a failed chain carries its error and no numbers."""
    skipped = ChainResult("openssh", skipped="OpenSSH sshd is not installed")
    failed = ChainResult("relay", error="ChainError: relay client: not ready")
    assert skipped.figures() == {"skipped": True, "reason": "OpenSSH sshd is not installed"}
    assert failed.figures() == {"error": "ChainError: relay client: not ready"}
    doc = document({"openssh": skipped, "relay": failed}, {}, {})
    assert doc["verification"]["openssh"]["ok"] is False
    assert "skipped" in table(doc, ["openssh", "relay"])
    assert verdicts(doc) == []


def test_verdicts_compare_relay_with_openssh() -> None:
    """Targets are judged on ratios to OpenSSH and absolute memory bounds."""
    doc = document({"openssh": _measured("openssh"), "relay": _measured("relay")}, {}, {})
    lines = verdicts(doc)
    assert any(line.startswith("met") and "bulk" in line for line in lines)
    assert any(line.startswith("MISSED") and "concurrent" in line for line in lines)
    per_process = [line for line in lines if "per relay process" in line]
    assert per_process == ["met     RSS base <= 50 MB per relay process: largest 22.0 MB "
                           "(22.0 / 19.0 MB client / server)"]
    assert doc["details"]["relay"]["rss_base_mb_per_process"][0] == [20.0, 20.0]


def test_plans_and_percentiles() -> None:
    """--quick is small; overrides apply; percentiles use nearest rank."""
    quick = Plan.make(quick=True, rounds=None, conns=None, bulk_mib=None)
    full = Plan.make(quick=False, rounds=None, conns=50, bulk_mib=8)
    assert quick.rounds == 1 and quick.bulk_bytes < full.bulk_bytes * 8
    assert full.conns == 50 and full.bulk_bytes == 8 * 1024 * 1024 and full.rounds == 3
    samples = [float(i) for i in range(1, 101)]
    assert percentile(samples, 99) == 99.0
    assert percentile(samples, 50) == 50.5
    assert math.isnan(percentile([], 50))
