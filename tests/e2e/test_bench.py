"""``bench --quick`` end to end: JSON shape, chains, byte verification (no timing asserts)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from container_desktop_relay.commands.bench.chains import find_sshd
from container_desktop_relay.commands.bench.report import CHAIN_KEYS
from helpers import CI, SRC, need_tool

pytestmark = pytest.mark.e2e


def _run_bench(tmp: Path, *flags: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-m", "container_desktop_relay", "bench", "--quick", "--json",
         str(out), *flags],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    return done, out


def test_bench_quick_reports_every_chain_verified(tmp: Path) -> None:
    """All three chains run, carry exactly the issue's keys, and verified every byte."""
    need_tool("ssh-keygen")
    if CI:
        need_tool("sshd", "/usr/sbin/sshd")
    done, out = _run_bench(tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    progress = [json.loads(line) for line in done.stderr.splitlines()]  # JSON lines only
    assert any(r["event"] == "bench_progress" and r["step"].startswith("relay: upload")
               for r in progress), done.stderr[-3000:]
    assert "relay" in done.stdout and "direct" in done.stdout  # the table goes to stdout
    for name in ("direct", "openssh", "relay"):
        fig = doc[name]
        if name == "openssh" and find_sshd() is None:
            assert fig == {"skipped": True, "reason": "OpenSSH sshd is not installed"}
            continue
        expected = [k for k in CHAIN_KEYS if name != "direct" or not k.startswith("rss_")]
        assert sorted(fig) == sorted(expected), name
        for key in expected:
            assert isinstance(fig[key], int | float) and not math.isnan(fig[key]), (name, key)
            assert fig[key] >= 0, (name, key)
        assert fig["concurrent_conns"] == doc["settings"]["conns"]
        assert fig["concurrent_errors"] == 0, name
        assert doc["verification"][name]["ok"] is True
        # bulk both ways, ping-pong, connects, idle probes and the concurrent echo
        settings = doc["settings"]
        assert doc["verification"][name]["verified_bytes"] >= (
            2 * settings["bulk_bytes"] + 2 * settings["conns"] * settings["conn_bytes"])


def test_bench_bad_flag_is_one_line_exit_2(tmp: Path) -> None:
    """An unknown flag or chain gives one error line and exit status 2."""
    for flags in (["--bogus"], ["--chains", "direct,nope"]):
        done, _ = _run_bench(tmp, *flags)
        assert done.returncode == 2
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert done.stdout == ""


def test_bench_startup_reports_sshd_and_the_relay_server(tmp: Path) -> None:
    """The start-up section: exec-to-banner runs and a median for sshd and the relay's server
    (and dist/'s Linux relay when built), and exec to the first /_ping answered through a client
    that spawns its server through wsl.exe; the table names them next to each other."""
    need_tool("ssh-keygen")
    if CI:
        need_tool("sshd", "/usr/sbin/sshd")
    done, out = _run_bench(tmp, "--chains", "direct", "--bulk-mib", "1", "--conns", "10",
                           "--startup-runs", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    startup = json.loads(out.read_text())["startup"]
    expected = {"relay", "client+server"} | ({"sshd"} if find_sshd() else set())
    assert expected <= set(startup), startup
    for name, fig in startup.items():
        assert len(fig["runs_ms"]) == 2 and all(v > 0 for v in fig["runs_ms"]), (name, fig)
        assert min(fig["runs_ms"]) <= fig["median_ms"] <= max(fig["runs_ms"])
        what = ("exec to first /_ping through the client" if name.startswith("client+")
                else "exec to SSH banner")
        assert f"start-up {name}: {what}" in done.stdout
