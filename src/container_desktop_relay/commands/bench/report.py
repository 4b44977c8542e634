"""Turn per-chain measurements into the JSON document and the stdout table."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CHAIN_KEYS", "ChainResult", "document", "machine", "startup_lines", "table",
           "verdicts"]

#: The keys every measured chain object carries (``rss_*`` absent for ``direct``).
CHAIN_KEYS = ("throughput_mb_s", "latency_p50_us", "latency_p99_us", "connect_p50_us",
              "concurrent_conns", "concurrent_errors", "rss_base_mb", "rss_per_conn_kb")


@dataclass(slots=True)
class ChainResult:
    """Everything measured for one chain, each figure a list with one value per round."""

    name: str
    upload_mb_s: list[float] = field(default_factory=list)
    download_mb_s: list[float] = field(default_factory=list)
    latency_p50_us: list[float] = field(default_factory=list)
    latency_p99_us: list[float] = field(default_factory=list)
    connect_p50_us: list[float] = field(default_factory=list)
    concurrent_mb_s: list[float] = field(default_factory=list)
    concurrent_errors: list[int] = field(default_factory=list)
    concurrent_conns: int = 0
    rss_base_mb: list[float] = field(default_factory=list)
    rss_per_conn_kb: list[float] = field(default_factory=list)
    #: per round, the base RSS of each forwarder process (relay: client, server)
    rss_base_each_mb: list[list[float]] = field(default_factory=list)
    cpu_s_per_gib: list[float] = field(default_factory=list)
    #: forwarder CPU per operation: what a ping-pong round trip and a new connection cost
    pingpong_cpu_us: list[float] = field(default_factory=list)
    connect_cpu_us: list[float] = field(default_factory=list)
    verified_bytes: int = 0
    skipped: str = ""
    error: str = ""
    has_rss: bool = True

    def figures(self) -> dict[str, Any]:
        """The chain object of the JSON document (medians over rounds)."""
        if self.skipped:
            return {"skipped": True, "reason": self.skipped}
        if self.error:
            return {"error": self.error}
        out: dict[str, Any] = {
            "throughput_mb_s": _r(_median([(u + d) / 2 for u, d in
                                          zip(self.upload_mb_s, self.download_mb_s,
                                              strict=True)])),
            "latency_p50_us": _r(_median(self.latency_p50_us)),
            "latency_p99_us": _r(_median(self.latency_p99_us)),
            "connect_p50_us": _r(_median(self.connect_p50_us)),
            "concurrent_conns": self.concurrent_conns,
            "concurrent_errors": max(self.concurrent_errors, default=0),
        }
        if self.has_rss:
            out["rss_base_mb"] = _r(_median(self.rss_base_mb))
            out["rss_per_conn_kb"] = _r(_median(self.rss_per_conn_kb))
        return out

    def details(self) -> dict[str, Any]:
        """Per-direction and per-round figures behind :meth:`figures`."""
        return {
            "upload_mb_s": [_r(v) for v in self.upload_mb_s],
            "download_mb_s": [_r(v) for v in self.download_mb_s],
            "concurrent_mb_s": [_r(v) for v in self.concurrent_mb_s],
            "bulk_cpu_s_per_gib": [_r(v) for v in self.cpu_s_per_gib],
            "pingpong_cpu_us_per_round_trip": [_r(v) for v in self.pingpong_cpu_us],
            "connect_cpu_us_per_connection": [_r(v) for v in self.connect_cpu_us],
            "rss_base_mb_per_process": [[_r(v) for v in each] for each in self.rss_base_each_mb],
            "verified_bytes": self.verified_bytes,
        }


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _r(value: float) -> float:
    return round(value, 1) if not math.isnan(value) else value


def _run(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or
                                                                     done.stderr) else ""


def machine() -> dict[str, Any]:
    """What the run was measured on: CPU, kernel, Python and library versions."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions: dict[str, str] = {}
    for module in ("asyncssh", "cryptography", "uvloop"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = "not installed"
    if sys.platform == "win32":
        raise NotImplementedError("bench runs on Linux")
    return {
        "cpu": cpu or platform.processor(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "openssh": _run(["ssh", "-V"]),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        **versions,
    }


def document(results: dict[str, ChainResult], settings: dict[str, Any],
             info: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` document: one object per chain plus settings, machine and details."""
    doc: dict[str, Any] = {name: r.figures() for name, r in results.items()}
    doc["verification"] = {name: {"verified_bytes": r.verified_bytes,
                                  "ok": not r.error and not r.skipped}
                           for name, r in results.items()}
    doc["details"] = {name: r.details() for name, r in results.items()}
    doc["settings"] = settings
    doc["machine"] = info
    return doc


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def table(doc: dict[str, Any], chains: list[str]) -> str:
    """A plain-text table of the chain objects with ratios to OpenSSH."""
    head = ("chain", "bulk MB/s", "p50 us", "p99 us", "connect p50 us", "concurrent",
            "errors", "RSS base MB", "KB/conn")
    rows = [head]
    for name in chains:
        fig = doc.get(name, {})
        if "skipped" in fig or "error" in fig:
            rows.append((name, f"skipped: {fig['reason']}" if "skipped" in fig
                         else f"error: {fig['error']}"[:60], "", "", "", "", "", "", ""))
            continue
        rows.append((name, _fmt(fig["throughput_mb_s"]), _fmt(fig["latency_p50_us"]),
                     _fmt(fig["latency_p99_us"]), _fmt(fig["connect_p50_us"]),
                     str(fig["concurrent_conns"]), str(fig["concurrent_errors"]),
                     _fmt(fig.get("rss_base_mb"), 1), _fmt(fig.get("rss_per_conn_kb"), 1)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths, strict=True))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def startup_lines(startup: dict[str, Any]) -> list[str]:
    """One line per program of the start-up section: exec to SSH banner (or, for the client
    chains, to the first answered /_ping), median and runs."""
    out = []
    for name, fig in startup.items():
        if "error" in fig:
            out.append(f"start-up {name}: error: {fig['error']}")
            continue
        runs = ", ".join(f"{v:.0f}" for v in fig["runs_ms"])
        what = ("exec to first /_ping through the client" if fig.get("measures") == "ping"
                else "exec to SSH banner")
        out.append(f"start-up {name}: {what} {fig['median_ms']:.0f} ms median ({runs})")
    return out


def verdicts(doc: dict[str, Any]) -> list[str]:
    """The issue's targets, each as 'met' or 'MISSED' with the measured figure."""
    relay = doc.get("relay", {})
    ossh = doc.get("openssh", {})
    if "throughput_mb_s" not in relay:
        return []
    out = []

    def check(label: str, ok: bool, figure: str) -> None:
        out.append(f"{'met   ' if ok else 'MISSED'}  {label}: {figure}")

    if "throughput_mb_s" in ossh:
        ratio = relay["throughput_mb_s"] / ossh["throughput_mb_s"]
        check("bulk >= 0.8x OpenSSH (stretch 1.0x)", ratio >= 0.8, f"{ratio:.2f}x")
        ratio = relay["latency_p50_us"] / ossh["latency_p50_us"]
        check("latency p50 <= 1.5x OpenSSH", ratio <= 1.5, f"{ratio:.2f}x")
        ratio = relay["connect_p50_us"] / ossh["connect_p50_us"]
        check("new-connection p50 <= 2x OpenSSH", ratio <= 2.0, f"{ratio:.2f}x")
    check(f"{relay['concurrent_conns']} concurrent connections with 0 errors",
          relay["concurrent_errors"] == 0, f"{relay['concurrent_errors']} errors")
    check("RSS base <= 50 MB", relay["rss_base_mb"] <= 50,
          f"{relay['rss_base_mb']} MB (client and server together)")
    each = doc.get("details", {}).get("relay", {}).get("rss_base_mb_per_process", [])
    if each:
        # In use the two roles run on different hosts (Windows and WSL): each alone counts.
        largest = max(max(round_) for round_ in each)
        check("RSS base <= 50 MB per relay process", largest <= 50,
              f"largest {largest} MB ({' / '.join(f'{v}' for v in each[-1])} MB "
              "client / server)")
    check("RSS per connection <= 64 KB", relay["rss_per_conn_kb"] <= 64,
          f"{relay['rss_per_conn_kb']} KB")
    return out
