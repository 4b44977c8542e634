"""Start-up time: exec to the first SSH banner (sshd, the relay's server), and exec to the first
``/_ping`` answered through a client that spawns its server (the desktop app's chain)."""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from container_desktop_relay.commands.bench import chains
from container_desktop_relay.commands.doctor import ping_stream

__all__ = ["STARTUP_TIMEOUT", "WSL_STANDIN", "find_dist_server", "measure_client_chain",
           "measure_startup", "relay_server_argv", "time_to_banner", "time_to_ping"]

STARTUP_TIMEOUT = 30.0
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
#: The shipped Linux relay as `make dist` leaves it in a checkout.
DIST_SERVER = Path("dist") / "container-desktop-relay-linux" / "container-desktop-relay-linux"
#: ``wsl.exe --distribution D --exec PROGRAM ARGS...`` on Linux: runs PROGRAM ARGS here, as
#: WSL's interop would inside the distribution (the spawn path is the app's, unchanged).
WSL_STANDIN = ('#!/bin/sh\n# wsl.exe stand-in (bench): --distribution D --exec PROGRAM ARGS\n'
               'shift 3\nexec "$@"\n')
_PONG = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOK"


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


async def _connect_until(open_stream: Callable[[], Awaitable[Stream]],
                         proc: asyncio.subprocess.Process, deadline: float, exited: str,
                         missing: str) -> Stream:
    """``open_stream()`` retried (0.5 ms apart at first, then up to 5 ms) until it connects;
    :class:`chains.ChainError` with ``exited`` (formatted with the ``status``) or ``missing``
    when ``proc`` ends or ``deadline`` passes first."""
    delay = 0.0005
    while True:
        if proc.returncode is not None:
            raise chains.ChainError(exited.format(status=proc.returncode))
        try:
            return await open_stream()
        except OSError:
            if time.monotonic() > deadline:
                raise chains.ChainError(f"{missing} after {STARTUP_TIMEOUT:g}s") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.005)


async def _read_banner(port: int, proc: asyncio.subprocess.Process, deadline: float) -> bytes:
    reader, writer = await _connect_until(
        lambda: asyncio.open_connection("127.0.0.1", port), proc, deadline,
        "exited with status {status} before its banner", "no SSH banner")
    try:
        return await asyncio.wait_for(reader.readline(), deadline - time.monotonic())
    finally:
        writer.close()


async def _spawn_logged(argv: list[str], log: Path,
                        env: dict[str, str] | None = None) -> tuple[asyncio.subprocess.Process,
                                                                    float]:
    """Start ``argv`` with stderr appended to ``log``; the process and its exec time."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=fd, env=env)
    finally:
        os.close(fd)
    return proc, started


async def time_to_banner(argv_for_port: Callable[[int], list[str]], log: Path) -> float:
    """Seconds from exec to the first line of the SSH banner; the process is then stopped."""
    port = chains.free_port()
    argv = argv_for_port(port)
    proc, started = await _spawn_logged(argv, log)
    try:
        banner = await _read_banner(port, proc, started + STARTUP_TIMEOUT)
        elapsed = time.monotonic() - started
    finally:
        await chains.stop(proc)
    if not banner.startswith(b"SSH-2.0-"):
        raise chains.ChainError(f"{argv[0]}: not an SSH banner: {banner[:40]!r}")
    return elapsed


async def _answer_pings(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The engine's side of ``GET /_ping``: 200 ``OK`` once a request's headers arrived."""
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_PONG)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        pass  # the client's readiness probe opens and closes without a request
    finally:
        writer.close()


async def time_to_ping(argv: list[str], env: dict[str, str], sock: Path, log: Path) -> float:
    """Seconds from exec of a client to the first ``/_ping`` answered through ``sock``, its
    local endpoint; the client (and the server it spawned) is then stopped."""
    if sys.platform == "win32":
        raise NotImplementedError("bench runs on Linux")
    proc, started = await _spawn_logged(argv, log, env)
    deadline = started + STARTUP_TIMEOUT
    try:
        while True:
            reader, writer = await _connect_until(
                lambda: asyncio.open_unix_connection(str(sock)), proc, deadline,
                "client exited with status {status}", "no local endpoint")
            try:
                wrong = await ping_stream(reader, writer, max(deadline - time.monotonic(), 0.1))
            finally:
                writer.close()
            if not wrong:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise chains.ChainError(f"/_ping through the client: {wrong}")
            await asyncio.sleep(0.005)  # refused before the link was up: ask again
    finally:
        await chains.stop(proc)


async def measure_client_chain(workdir: Path, runs: int, keys: dict[str, Path],
                               servers: dict[str, Path],
                               say: Callable[[str], None]) -> dict[str, dict[str, object]]:
    """``runs`` starts of the client as the app starts it (it spawns its server through a
    ``wsl.exe`` stand-in), once per relay program in ``servers`` (run as the client and as the
    server it spawns): exec to the first answered ``/_ping`` through its endpoint. Keys:
    ``rsa`` (the identity)."""
    base = workdir / "client-chain"
    bindir = base / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    wsl = bindir / "wsl.exe"
    wsl.write_text(WSL_STANDIN)
    wsl.chmod(0o755)
    engine = base / "engine.sock"
    if sys.platform == "win32":
        raise NotImplementedError("bench runs on Linux")
    pinger = await asyncio.start_unix_server(_answer_pings, str(engine))
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
           "CDR_HEALTH_CHECK_ENABLED": "false", "CDR_METRICS_ENABLED": "false"}
    async def start(name: str, run: int) -> float:
        program = servers[name]
        port, sock = chains.free_port(), base / f"c{run}-{name}.sock"
        argv = [str(program), "client",
                "--listen", f"unix://{sock}",
                "--ssh-connection", f"ssh://bench@127.0.0.1:{port}{engine}",
                "--identity-path", str(keys["rsa"]),
                "--known-hosts-path", str(base / f"known_hosts-{run}-{name}"),
                "--distribution", "Bench", "--relay-program-path", str(program),
                "--host", "127.0.0.1", "--port", str(port)]
        return await time_to_ping(argv, env, sock, base / f"{name}.log")

    try:
        return await _interleaved(runs, list(servers), start,
                                  (chains.ChainError, OSError, TimeoutError), say,
                                  "exec to first /_ping through the client,", "ping")
    finally:
        pinger.close()
        await pinger.wait_closed()


async def _interleaved(runs: int, names: list[str],
                       start: Callable[[str, int], Awaitable[float]],
                       caught: tuple[type[BaseException], ...], say: Callable[[str], None],
                       what: str, measures: str | None) -> dict[str, dict[str, object]]:
    """``runs`` rounds of ``start(name, round)`` (seconds) for each name in turn; per name the
    median and every run (ms), or the error that stopped it (``caught``)."""
    times: dict[str, list[float]] = {name: [] for name in names}
    errors: dict[str, str] = {}
    for run in range(runs):
        for name in names:
            if name in errors:
                continue
            try:
                seconds = await start(name, run)
            except caught as exc:
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
        if measures is not None:
            out[name]["measures"] = measures
        say(f"start-up {name}: {what} median {out[name]['median_ms']} ms of {len(values)}")
    return out


async def measure_startup(workdir: Path, runs: int,
                          programs: dict[str, Callable[[int], list[str]]],
                          say: Callable[[str], None]) -> dict[str, dict[str, object]]:
    """``runs`` starts of each program, interleaved; per program the median and every run (ms),
    or the error that stopped it."""
    async def start(name: str, run: int) -> float:
        return await time_to_banner(programs[name], workdir / f"startup-{name}.log")

    return await _interleaved(runs, list(programs), start, (chains.ChainError, OSError), say,
                              "exec to SSH banner,", None)
