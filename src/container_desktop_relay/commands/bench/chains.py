"""Start and stop what each chain runs: the target, sshd + ``ssh -L``, the relay's two roles.

A chain is an async context manager that yields the Unix-socket path clients connect to and
knows the PIDs of its forwarder processes (for RSS). Every process started here is stopped in
``finally``; readiness is waited for on a condition with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Chain",
    "ChainError",
    "cpu_s",
    "find_sshd",
    "free_port",
    "make_keys",
    "openssh_chain",
    "relay_chain",
    "rss_kb",
    "sshd_config",
    "start_sshd",
    "start_target",
    "stop",
    "wait_for",
]

SSH_CIPHER = "aes128-gcm@openssh.com"
READY_TIMEOUT = 20.0


class ChainError(Exception):
    """A chain could not be started (a tool is missing or did not become ready)."""


@dataclass(slots=True)
class Chain:
    """A running chain: where to connect and which processes do the forwarding."""

    name: str
    path: str
    pids: list[int] = field(default_factory=list)
    cipher: str = ""

    def rss_kb(self) -> int:
        """Summed RSS of the forwarder processes and their children, KiB."""
        return sum(self.rss_kb_each())

    def rss_kb_each(self) -> list[int]:
        """RSS of each forwarder process (with its children), KiB, in ``pids`` order."""
        return [rss_kb(pid, children=True) for pid in self.pids]

    def cpu_s(self) -> float:
        """Summed user+system CPU seconds of the forwarder processes and live children."""
        return sum(cpu_s(pid, children=True) for pid in self.pids)


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as fh:
                kids.extend(int(p) for p in fh.read().split())
    return kids


def rss_kb(pid: int, *, children: bool = False) -> int:
    """VmRSS of ``pid`` (plus its descendants), KiB; 0 when it is gone."""
    total = 0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    total = int(line.split()[1])
                    break
    except OSError:
        return 0
    if children:
        total += sum(rss_kb(kid, children=True) for kid in _children(pid))
    return total


def cpu_s(pid: int, *, children: bool = False) -> float:
    """utime+stime of ``pid`` (plus its live descendants), seconds; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    if sys.platform == "win32":
        raise NotImplementedError("bench runs on Linux")
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    if children:
        total += sum(cpu_s(kid, children=True) for kid in _children(pid))
    return total


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for(check: Callable[[], bool], what: str, proc: asyncio.subprocess.Process | None,
                   timeout: float = READY_TIMEOUT) -> None:
    """Poll ``check`` until true; fail at the deadline or when ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while not check():
        if proc is not None and proc.returncode is not None:
            raise ChainError(f"{what}: process exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise ChainError(f"{what}: not ready after {timeout:g}s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


def _accepts_unix(path: str) -> bool:
    if sys.platform == "win32":
        raise NotImplementedError("bench runs on Linux")
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
        return True


def _accepts_tcp(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def stop(proc: asyncio.subprocess.Process | None, timeout: float = 5.0) -> None:
    """SIGTERM ``proc``, SIGKILL it after ``timeout``, and reap it."""
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def _spawn(args: list[str], log: Path, **kw: Any) -> asyncio.subprocess.Process:
    """Start ``args`` with stderr going to ``log`` (an unread pipe would block a chatty child)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return await asyncio.create_subprocess_exec(
            *args, stdin=kw.pop("stdin", subprocess.DEVNULL),
            stdout=kw.pop("stdout", subprocess.DEVNULL), stderr=fd, **kw)
    finally:
        os.close(fd)


def _tail(log: Path, limit: int = 800) -> str:
    try:
        return log.read_bytes()[-limit:].decode(errors="replace").strip()
    except OSError:
        return ""


async def _ready(proc: asyncio.subprocess.Process, check: Callable[[], bool], what: str,
                 log: Path) -> None:
    try:
        await wait_for(check, what, proc)
    except ChainError as exc:
        await stop(proc)
        raise ChainError(f"{exc}: {_tail(log)}") from None


def _python() -> list[str]:
    return [sys.executable]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


async def start_target(path: str) -> asyncio.subprocess.Process:
    """Start the target process on ``path`` and wait for its ``ready`` line."""
    proc = await asyncio.create_subprocess_exec(
        *_python(), "-m", "container_desktop_relay.commands.bench.targets", path,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_env(),
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)
    except TimeoutError:
        line = b""
    if line.strip() != b"ready":
        await stop(proc)
        raise ChainError(f"target did not start (said {line!r})")
    return proc


def find_sshd() -> str | None:
    """Path of OpenSSH's sshd, or None."""
    for candidate in ("/usr/sbin/sshd", "/usr/local/sbin/sshd"):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("sshd")


def make_keys(workdir: Path) -> dict[str, Path]:
    """ed25519 host and user keys plus authorized_keys and known_hosts material in ``workdir``."""
    keys = {}
    for name in ("host", "user"):
        path = workdir / f"{name}_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"bench-{name}",
                        "-f", str(path)], check=True, stdin=subprocess.DEVNULL)
        keys[name] = path
    auth = workdir / "authorized_keys"
    auth.write_bytes(keys["user"].with_suffix(".pub").read_bytes())
    auth.chmod(0o600)
    keys["authorized_keys"] = auth
    return keys


def sshd_config(workdir: Path, port: int, keys: dict[str, Path]) -> Path:
    """A loopback sshd config: key login only, streamlocal forwarding allowed."""
    cfg = workdir / "sshd_config"
    cfg.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys['host']}\n"
        f"AuthorizedKeysFile {keys['authorized_keys']}\nPidFile none\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nAllowStreamLocalForwarding yes\nAllowTcpForwarding yes\n"
        "PermitRootLogin yes\nMaxStartups 100\nLogLevel ERROR\n"
    )
    return cfg


async def start_sshd(sshd: str, cfg: Path, port: int) -> asyncio.subprocess.Process:
    """Run ``sshd -D -e -f cfg`` and wait until it accepts on ``port``."""
    if sys.platform == "win32":
        raise NotImplementedError("bench runs on Linux")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = cfg.parent / "sshd.log"
    proc = await _spawn([sshd, "-D", "-e", "-f", str(cfg)], log)
    await _ready(proc, lambda: _accepts_tcp(port), "sshd", log)
    return proc


async def start_ssh_forward(workdir: Path, keys: dict[str, Path], port: int, local: str,
                            remote: str, cipher: str = SSH_CIPHER,
                            extra: list[str] | None = None) -> asyncio.subprocess.Process:
    """``ssh -N -L local:remote`` to 127.0.0.1:``port``; waits until ``local`` accepts."""
    known = workdir / "known_hosts_ssh"
    host_pub = keys["host"].with_suffix(".pub").read_text().split()
    known.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    log = workdir / "ssh.log"
    proc = await _spawn([
        "ssh", "-N", "-F", "none", "-p", str(port), "-i", str(keys["user"]),
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known}",
        "-o", "StrictHostKeyChecking=yes", "-o", "ExitOnForwardFailure=yes",
        "-o", "StreamLocalBindUnlink=yes", "-o", "Compression=no", "-c", cipher,
        *(extra or []), "-L", f"{local}:{remote}", f"{getpass.getuser()}@127.0.0.1",
    ], log)
    await _ready(proc, lambda: _accepts_unix(local), "ssh -L", log)
    return proc


def relay_server_args(keys: dict[str, Path], port: int, max_connections: int) -> list[str]:
    """Flags that run our server role on 127.0.0.1:``port`` with the bench keys."""
    return [
        "server", "--host", "127.0.0.1", "--port", str(port),
        "--identity-path", str(keys["host"]), "--authorized-keys-path",
        str(keys["authorized_keys"]), "--max-connections", str(max_connections),
        "--health-check-enabled", "false", "--metrics-enabled", "false",
        "--log-level", "warn",
    ]


async def start_relay_server(keys: dict[str, Path], port: int,
                             max_connections: int) -> asyncio.subprocess.Process:
    """Run our server role and wait until it accepts."""
    log = keys["host"].parent / "relay-server.log"
    proc = await _spawn([*_python(), "-m", "container_desktop_relay",
                         *relay_server_args(keys, port, max_connections)], log, env=_env())
    await _ready(proc, lambda: _accepts_tcp(port), "relay server", log)
    return proc


@contextlib.asynccontextmanager
async def openssh_chain(workdir: Path, keys: dict[str, Path], target: str,
                        *, server: str = "sshd",
                        max_connections: int = 2000) -> AsyncIterator[Chain]:
    """``ssh -L`` to a real sshd (``server="sshd"``) or to our server role (``"relay"``)."""
    port = free_port()
    local = str(workdir / f"ssh-{server}.sock")
    server_proc = None
    ssh_proc = None
    try:
        if server == "sshd":
            sshd = find_sshd()
            if sshd is None:
                raise ChainError("sshd is not installed")
            server_proc = await start_sshd(sshd, sshd_config(workdir, port, keys), port)
        else:
            server_proc = await start_relay_server(keys, port, max_connections)
        ssh_proc = await start_ssh_forward(workdir, keys, port, local, target)
        yield Chain(f"openssh->{server}", local, [ssh_proc.pid, server_proc.pid], SSH_CIPHER)
    finally:
        await stop(ssh_proc)
        await stop(server_proc)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(local)


def relay_client_args(workdir: Path, keys: dict[str, Path], port: int, local: str,
                      target: str, max_connections: int) -> list[str]:
    """Flags that run our client role: ``local`` -> 127.0.0.1:``port`` -> ``target``."""
    known = workdir / "known_hosts_relay"
    host_pub = keys["host"].with_suffix(".pub").read_text().split()
    known.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    return [
        "client", "--listen", f"unix://{local}",
        "--ssh-connection", f"ssh://{getpass.getuser()}@127.0.0.1:{port}{target}",
        "--identity-path", str(keys["user"]), "--known-hosts-path", str(known),
        "--secure-host-key", "true", "--max-connections", str(max_connections),
        "--tid-path", str(workdir / "relay-client.tid"),
        "--health-check-enabled", "false", "--metrics-enabled", "false",
        "--log-level", "warn",
    ]


@contextlib.asynccontextmanager
async def relay_chain(workdir: Path, keys: dict[str, Path], target: str,
                      *, max_connections: int = 2000) -> AsyncIterator[Chain]:
    """This relay: our client role -> one SSH connection -> our server role -> ``target``."""
    port = free_port()
    local = str(workdir / "relay.sock")
    tid = workdir / "relay-client.tid"
    tid.unlink(missing_ok=True)
    server_proc = client_proc = None
    try:
        server_proc = await start_relay_server(keys, port, max_connections)
        log = workdir / "relay-client.log"
        client_proc = await _spawn(
            [*_python(), "-m", "container_desktop_relay",
             *relay_client_args(workdir, keys, port, local, target, max_connections)],
            log, env=_env())
        # The client writes its tid file once linked and its probe channel opened.
        await _ready(client_proc, tid.exists, "relay client", log)
        yield Chain("relay", local, [client_proc.pid, server_proc.pid])
    finally:
        await stop(client_proc)
        await stop(server_proc)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(local)
