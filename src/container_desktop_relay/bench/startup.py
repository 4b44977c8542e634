"""Start-up time: from exec to the first SSH banner, for sshd and for the relay's server."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from container_desktop_relay.bench import chains

__all__ = ["STARTUP_TIMEOUT", "find_dist_server", "measure_startup", "relay_server_argv",
           "time_to_banner"]

STARTUP_TIMEOUT = 30.0
#: The shipped Linux relay as `make dist` leaves it in a checkout.
DIST_SERVER = Path("dist") / "container-desktop-relay-linux" / "container-desktop-relay-linux"


def find_dist_server() -> Path | None:
    """The Linux artifact of this checkout (or $CDR_BENCH_DIST), when it has been built."""
    named = os.environ.get("CDR_BENCH_DIST")
    candidate = Path(named) if named else Path(__file__).resolve().parents[3] / DIST_SERVER
    return candidate if os.access(candidate, os.X_OK) else None


def relay_server_argv(program: list[str], keys: dict[str, Path], port: int) -> list[str]:
    """The server with default settings, except where it listens and which keys it uses.

    /health and /metrics stay on (the default) but on free ports, so runs never collide."""
    return [*program, "server", "--host", "127.0.0.1", "--port", str(port),
            "--identity-path", str(keys["rsa"]), "--authorized-keys-path",
            str(keys["authorized_keys"]), "--health-check-port", str(chains.free_port()),
            "--metrics-port", str(chains.free_port())]


async def _read_banner(port: int, proc: asyncio.subprocess.Process, deadline: float) -> bytes:
    delay = 0.0005
    while True:
        if proc.returncode is not None:
            raise chains.ChainError(f"exited with status {proc.returncode} before its banner")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise chains.ChainError(f"no SSH banner after {STARTUP_TIMEOUT:g}s") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.005)
            continue
        try:
            return await asyncio.wait_for(reader.readline(), deadline - time.monotonic())
        finally:
            writer.close()


async def time_to_banner(argv_for_port: Callable[[int], list[str]], log: Path) -> float:
    """Seconds from exec to the first line of the SSH banner; the process is then stopped."""
    port = chains.free_port()
    argv = argv_for_port(port)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=fd)
    finally:
        os.close(fd)
    try:
        banner = await _read_banner(port, proc, started + STARTUP_TIMEOUT)
        elapsed = time.monotonic() - started
    finally:
        await chains.stop(proc)
    if not banner.startswith(b"SSH-2.0-"):
        raise chains.ChainError(f"{argv[0]}: not an SSH banner: {banner[:40]!r}")
    return elapsed


async def measure_startup(workdir: Path, runs: int,
                          programs: dict[str, Callable[[int], list[str]]],
                          say: Callable[[str], None]) -> dict[str, dict[str, object]]:
    """``runs`` starts of each program, interleaved; per program the median and every run (ms),
    or the error that stopped it."""
    times: dict[str, list[float]] = {name: [] for name in programs}
    errors: dict[str, str] = {}
    for _ in range(runs):
        for name, argv_for_port in programs.items():
            if name in errors:
                continue
            try:
                seconds = await time_to_banner(argv_for_port, workdir / f"startup-{name}.log")
            except (chains.ChainError, OSError) as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
                say(f"start-up {name}: FAILED: {errors[name]}")
                continue
            times[name].append(seconds * 1000)
    out: dict[str, dict[str, object]] = {}
    for name, values in times.items():
        if name in errors:
            out[name] = {"error": errors[name]}
            continue
        out[name] = {"median_ms": round(statistics.median(values), 1),
                     "runs_ms": [round(v, 1) for v in values]}
        say(f"start-up {name}: exec to SSH banner, median {out[name]['median_ms']} ms "
            f"of {len(values)}")
    return out
