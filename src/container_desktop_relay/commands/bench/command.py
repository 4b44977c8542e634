"""``container-desktop-relay bench``: run every chain, print the table, write ``--json``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from container_desktop_relay.commands.args import ArgumentError
from container_desktop_relay.commands.bench import chains, startup, workloads
from container_desktop_relay.commands.bench.report import (
    ChainResult,
    document,
    machine,
    startup_lines,
    table,
    verdicts,
)
from container_desktop_relay.commands.registry import BENCH_CHAINS
from container_desktop_relay.log import get_logger, setup_logging

T = TypeVar("T")

__all__ = ["CHAINS", "Plan", "run_bench", "run_bench_command"]

log = get_logger(__name__)

CHAINS = BENCH_CHAINS
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Sizes and counts of one run."""

    bulk_bytes: int
    pingpong_rounds: int
    connect_rounds: int
    conns: int
    conn_bytes: int
    rounds: int
    concurrent_timeout: float = 300.0
    startup_runs: int = 5

    @classmethod
    def make(cls, *, quick: bool, rounds: int | None, conns: int | None,
             bulk_mib: int | None, startup_runs: int | None = None) -> Plan:
        """The quick or full plan, with any overrides."""
        if quick:
            base = cls(bulk_bytes=32 * MIB, pingpong_rounds=300, connect_rounds=60,
                       conns=200, conn_bytes=256 * 1024, rounds=1, concurrent_timeout=60.0)
        else:
            base = cls(bulk_bytes=512 * MIB, pingpong_rounds=5000, connect_rounds=500,
                       conns=1000, conn_bytes=MIB, rounds=3)
        return cls(
            bulk_bytes=(bulk_mib * MIB) if bulk_mib else base.bulk_bytes,
            pingpong_rounds=base.pingpong_rounds, connect_rounds=base.connect_rounds,
            conns=conns or base.conns, conn_bytes=base.conn_bytes,
            rounds=rounds or base.rounds, concurrent_timeout=base.concurrent_timeout,
            startup_runs=(3 if quick else 5) if startup_runs is None else startup_runs,
        )


def _progress(msg: str) -> None:
    """One JSON line on stderr per step (``bench_progress``, ``step``); the table is stdout."""
    log.info("bench_progress", extra={"step": msg})


async def _with_cpu(chain: chains.Chain, work: Awaitable[T]) -> tuple[T, float]:
    """Run ``work``; return its result and the CPU seconds the forwarders spent meanwhile."""
    before = chain.cpu_s()
    out = await work
    return out, chain.cpu_s() - before


async def _measure(chain: chains.Chain, plan: Plan, result: ChainResult,
                   say: Callable[[str], None]) -> None:
    name = chain.name
    await workloads.connect_cost(chain.path, 3)  # warm-up: first channel, lazy imports
    if result.has_rss:
        each = chain.rss_kb_each()
        result.rss_base_mb.append(sum(each) / 1024)
        result.rss_base_each_mb.append([kb / 1024 for kb in each])

    async def bulk() -> tuple[workloads.Bulk, workloads.Bulk]:
        up = await workloads.bulk_upload(chain.path, plan.bulk_bytes)
        say(f"{name}: upload {plan.bulk_bytes // MIB} MiB {up.mb_s:.0f} MB/s (sha256 ok)")
        down = await workloads.bulk_download(chain.path, plan.bulk_bytes)
        say(f"{name}: download {plan.bulk_bytes // MIB} MiB {down.mb_s:.0f} MB/s (sha256 ok)")
        return up, down

    (up, down), cpu = await _with_cpu(chain, bulk())
    if result.has_rss:
        result.cpu_s_per_gib.append(cpu * 1024 * MIB / (2 * plan.bulk_bytes))
    result.upload_mb_s.append(up.mb_s)
    result.download_mb_s.append(down.mb_s)
    pp, cpu = await _with_cpu(chain, workloads.ping_pong(chain.path, plan.pingpong_rounds))
    if result.has_rss:
        result.pingpong_cpu_us.append(cpu * 1e6 / plan.pingpong_rounds)
    say(f"{name}: ping-pong 1 KiB x{plan.pingpong_rounds} p50 {pp.p50:.0f} us "
        f"p99 {pp.p99:.0f} us")
    result.latency_p50_us.append(pp.p50)
    result.latency_p99_us.append(pp.p99)
    cc, cpu = await _with_cpu(chain, workloads.connect_cost(chain.path, plan.connect_rounds))
    if result.has_rss:
        result.connect_cpu_us.append(cpu * 1e6 / plan.connect_rounds)
    say(f"{name}: connect+64 B echo+close x{plan.connect_rounds} p50 {cc.p50:.0f} us")
    result.connect_p50_us.append(cc.p50)
    before = chain.rss_kb() if result.has_rss else 0
    socks = await workloads.open_idle(chain.path, plan.conns)
    try:
        if result.has_rss:
            opened = chain.rss_kb()
            result.rss_per_conn_kb.append((opened - before) / plan.conns)
            say(f"{name}: {plan.conns} idle connections open, RSS {before / 1024:.1f} -> "
                f"{opened / 1024:.1f} MB")
        conc = await workloads.run_concurrent(socks, plan.conn_bytes, plan.concurrent_timeout)
    finally:
        for sock in socks:
            sock.close()
    say(f"{name}: {plan.conns} x {plan.conn_bytes // 1024} KiB echo {conc.mb_s:.0f} MB/s, "
        f"{conc.errors} errors{' ' + str(conc.error_kinds) if conc.errors else ''}")
    result.concurrent_conns = plan.conns
    result.concurrent_mb_s.append(conc.mb_s)
    result.concurrent_errors.append(conc.errors)
    result.verified_bytes += (
        2 * plan.bulk_bytes + 2 * 1024 * plan.pingpong_rounds + 2 * 64 * plan.connect_rounds
        + 2 * plan.conns + 2 * (plan.conns - conc.errors) * plan.conn_bytes)


@contextlib.asynccontextmanager
async def _direct(target: str) -> AsyncIterator[chains.Chain]:
    yield chains.Chain("direct", target)


def _starter(name: str, workdir: Path, keys: dict[str, Path], target: str,
             conns: int) -> AbstractAsyncContextManager[chains.Chain]:
    if name == "direct":
        return _direct(target)
    if name == "openssh":
        return chains.openssh_chain(workdir, keys, target, server="sshd")
    return chains.relay_chain(workdir, keys, target, max_connections=conns + 100)


async def run_bench(plan: Plan, names: Sequence[str],
                    say: Callable[[str], None] = _progress) -> dict[str, Any]:
    """Run ``names`` for ``plan.rounds`` rounds (chains alternating); returns the document."""
    workloads.raise_nofile()
    results = {n: ChainResult(n, has_rss=n != "direct") for n in names}
    if "openssh" in results and chains.find_sshd() is None:
        results["openssh"].skipped = "OpenSSH sshd is not installed"
    workdir = Path(tempfile.mkdtemp(prefix="cdr-bench-", dir="/tmp"))
    started = time.monotonic()
    try:
        keys = chains.make_keys(workdir)
        startup_doc = await _startup(workdir, keys, plan.startup_runs, say)
        target = str(workdir / "target.sock")
        target_proc = await chains.start_target(target)
        try:
            for rnd in range(1, plan.rounds + 1):
                for name in names:
                    result = results[name]
                    if result.skipped or result.error:
                        continue
                    say(f"round {rnd}/{plan.rounds}: {name}")
                    try:
                        async with _starter(name, workdir, keys, target, plan.conns) as chain:
                            await _measure(chain, plan, result, say)
                    except (chains.ChainError, workloads.VerificationError, OSError) as exc:
                        result.error = f"{type(exc).__name__}: {exc}"
                        say(f"{name}: FAILED: {result.error}")
        finally:
            await chains.stop(target_proc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    settings = {"quick": plan.rounds == 1 and plan.bulk_bytes < 512 * MIB,
                "rounds": plan.rounds, "bulk_bytes": plan.bulk_bytes,
                "pingpong_rounds": plan.pingpong_rounds, "pingpong_bytes": 1024,
                "connect_rounds": plan.connect_rounds, "conns": plan.conns,
                "conn_bytes": plan.conn_bytes, "ssh_cipher": chains.SSH_CIPHER,
                "seconds": round(time.monotonic() - started, 1)}
    doc = document(results, settings, machine())
    if startup_doc:
        doc["startup"] = startup_doc
    return doc


async def _startup(workdir: Path, keys: dict[str, Path], runs: int,
                   say: Callable[[str], None]) -> dict[str, Any]:
    """Exec-to-banner medians of sshd and the relay's server (an RSA 4096 key, as keygen
    makes); empty when ``runs`` is 0."""
    if runs <= 0:
        return {}
    from container_desktop_relay.ssh.keys import ensure_key_pair

    rsa = workdir / "startup" / "id_rsa"
    ensure_key_pair(rsa, workdir / "startup" / "authorized_keys")
    rsa_keys = {**keys, "host": rsa, "rsa": rsa}
    programs: dict[str, Callable[[int], list[str]]] = {}
    sshd = chains.find_sshd()
    if sshd is not None:
        if sys.platform == "win32":
            raise NotImplementedError("bench runs on Linux")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privsep directory
        programs["sshd"] = lambda port: [sshd, "-D", "-e", "-f", str(
            chains.sshd_config(workdir / "startup", port, rsa_keys))]
    programs["relay"] = lambda port: startup.relay_server_argv(
        [sys.executable, "-m", "container_desktop_relay"], rsa_keys, port)
    dist = startup.find_dist_server()
    if dist is not None:
        programs["relay-dist"] = lambda port: startup.relay_server_argv([str(dist)], rsa_keys,
                                                                        port)
    doc = await startup.measure_startup(workdir, runs, programs, say)
    # The app's chain: the client spawning its server through wsl.exe, to the first /_ping.
    wrapper = workdir / "startup" / "relay-python"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m container_desktop_relay "$@"\n')
    wrapper.chmod(0o755)
    servers = {"client+server": wrapper}
    if dist is not None:
        servers["client+server-dist"] = dist
    doc.update(await startup.measure_client_chain(workdir, runs, rsa_keys, servers, say))
    return doc


def run_bench_command(args: argparse.Namespace) -> int:
    """Entry point of ``bench`` (flags: see commands.registry): 0 when every chain that ran
    verified all its bytes."""
    names = [n.strip() for n in args.chains.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CHAINS))
    if unknown or not names:
        raise ArgumentError(f"--chains: unknown chain(s) {', '.join(unknown) or '(none)'}; "
                            f"choose from {', '.join(CHAINS)}")
    setup_logging("info")
    plan = Plan.make(quick=args.quick, rounds=args.rounds, conns=args.conns,
                     bulk_mib=args.bulk_mib, startup_runs=args.startup_runs)
    from container_desktop_relay.runtime.app import run_loop

    holder: dict[str, Any] = {}

    async def main() -> int:
        holder["doc"] = await run_bench(plan, names)
        return 0

    run_loop(main)
    doc = holder["doc"]
    print(table(doc, names), end="")
    for line in startup_lines(doc.get("startup", {})):
        print(line)
    for line in verdicts(doc):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    failed = [n for n in names if "error" in doc[n]]
    return 1 if failed else 0
