"""The shipped Linux relay (dist/container-desktop-relay-linux/, `make dist`), tested as shipped.

It runs with an empty environment (no PATH, no PYTHON*), so it can only work if it carries its
own interpreter. scripts/build-dist.sh builds it when its inputs changed (a no-op otherwise).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import EchoTarget, Proc, exchange, free_port, skip_or_fail, ssh_forward, wait_for

REPO = Path(__file__).resolve().parents[2]
NAME = "container-desktop-relay-linux"
EXE = REPO / "dist" / NAME / NAME
FACTOR = float(os.environ.get("CDR_TEST_TIMEOUT_FACTOR", "1"))
MIB = 1024 * 1024


def build_linux_dist() -> Path:
    """The Linux artifact, built by scripts/build-dist.sh when its inputs changed."""
    done = subprocess.run(["bash", str(REPO / "scripts" / "build-dist.sh"), "linux"],
                          env=dict(os.environ, PYTHON=os.environ.get("PYTHON", sys.executable)),
                          capture_output=True, text=True, timeout=900 * FACTOR, check=False)
    assert done.returncode == 0, f"build-dist.sh linux failed:\n{done.stdout}\n{done.stderr}"
    return EXE


@pytest.fixture(scope="module")
def dist_exe() -> Path:
    """The built executable."""
    return build_linux_dist()


@pytest.fixture
def dist_keys(dist_exe: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The executable's own keygen: (identity, authorized_keys), in an empty environment."""
    identity, authorized = tmp_path / "id_rsa", tmp_path / "authorized_keys"
    subprocess.run([str(dist_exe), "keygen", "--identity-path", str(identity),
                    "--authorized-keys-path", str(authorized), "--log-level", "warn"],
                   env={"HOME": str(tmp_path)}, check=True, capture_output=True,
                   timeout=120 * FACTOR)
    return identity, authorized


def start_dist_server(exe: Path, keys: tuple[Path, Path], port: int, log: Path,
                      env: dict[str, str] | None = None) -> Proc:
    """``exe server`` on 127.0.0.1:port with an empty environment (plus ``env``); waits until
    it listens."""
    identity, authorized = keys
    proc = Proc([str(exe), "server", "--host", "127.0.0.1", "--port", str(port),
                 "--identity-path", str(identity), "--authorized-keys-path", str(authorized),
                 "--health-check-enabled", "false", "--metrics-enabled", "false",
                 "--log-level", "info"], log, env={"HOME": str(log.parent), **(env or {})})
    try:
        wait_for(lambda: '"server_listening"' in proc.log() or not proc.alive(), 60,
                 "the dist server to listen")
        assert proc.alive(), proc.log()
    except BaseException:
        proc.stop()
        raise
    return proc


@pytest.fixture
def dist_server(dist_exe: Path, dist_keys: tuple[Path, Path],
                tmp_path: Path) -> Iterator[tuple[int, Proc]]:
    """The executable's server on a free port; yields (port, process)."""
    port = free_port()
    proc = start_dist_server(dist_exe, dist_keys, port, tmp_path / "server.log")
    try:
        yield port, proc
    finally:
        proc.stop()


def test_dist_version_names_what_it_carries(dist_exe: Path) -> None:
    """--version: the relay's version and the Python, asyncssh and cryptography inside."""
    out = subprocess.run([str(dist_exe), "--version"], env={}, capture_output=True, text=True,
                         timeout=60 * FACTOR, check=True).stdout.strip()
    assert re.fullmatch(r"container-desktop-relay \S+ \(Python 3\.\d+\.\d+, asyncssh "
                        r"\d+\.\d+\.\d+, cryptography \d+\.\d+\.\d+\)", out), out


def test_dist_server_behind_openssh_16mib_echo_byte_exact(
        dist_server: tuple[int, Proc], dist_keys: tuple[Path, Path], tmp_path: Path) -> None:
    """OpenSSH ``ssh -N -L`` → the executable's server → a Unix echo: 16 MiB come back
    byte-exact, and EOF gets through both ways (the read ends only after the echo's EOF)."""
    port, _ = dist_server
    echo = EchoTarget(tmp_path / "echo.sock")
    ssh = ssh_forward(port, dist_keys[0], tmp_path / "fwd.sock", str(echo.path), tmp_path)
    try:
        payload = os.urandom(16 * MIB)
        assert exchange(tmp_path / "fwd.sock", payload, timeout=120) == (
            len(payload), hashlib.sha256(payload).hexdigest())
    finally:
        ssh.stop()
        echo.close()


def _port_free(port: int) -> bool:
    """Whether a new server could bind 127.0.0.1:port now (as the relay binds: SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
        return True


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_kill_9_of_the_started_process_frees_the_port(
        dist_exe: Path, dist_keys: tuple[Path, Path], tmp_path: Path) -> None:
    """``kill -9`` of the process that was started (no cleanup runs) ends the relay: nothing
    of it keeps running and the SSH port can be bound again within 5 s, so a respawned
    server starts. (A one-file build left its bootloader's child listening.)"""
    port = free_port()
    first = start_dist_server(dist_exe, dist_keys, port, tmp_path / "first.log")
    try:
        assert not _port_free(port)
        os.kill(first.pid, signal.SIGKILL)
        first.popen.wait(5 * FACTOR)  # reaped: a zombie would still count as the group
        wait_for(lambda: _group_gone(first.pid), 5, "every process of the relay to end")
        wait_for(lambda: _port_free(port), 5, "the SSH port to be free")
    finally:
        first.stop()
    second = start_dist_server(dist_exe, dist_keys, port, tmp_path / "second.log")
    with contextlib.closing(socket.create_connection(("127.0.0.1", port), 10)) as sock:
        sock.settimeout(30 * FACTOR)
        banner = sock.recv(256)
    second.stop()
    assert banner.startswith(b"SSH-2.0-")


def test_make_dist_sums_cover_every_artifact() -> None:
    """build-dist.sh all (what `make dist` runs; cached, so cheap after a build): the Linux
    relay, the Windows .exe, wheel and sdist are there, and SHA256SUMS lists every file in
    dist/ and passes ``sha256sum -c``."""
    if shutil.which("wine") is None:
        skip_or_fail("Wine is not installed", "run scripts/setup-wine.sh as root")
    done = subprocess.run(["bash", str(REPO / "scripts" / "build-dist.sh"), "all"],
                          env=dict(os.environ, PYTHON=os.environ.get("PYTHON", sys.executable)),
                          capture_output=True, text=True, timeout=3600 * FACTOR, check=False)
    assert done.returncode == 0, f"build-dist.sh all failed:\n{done.stdout}\n{done.stderr}"
    dist = REPO / "dist"
    listed = {line.split("  ", 1)[1] for line in
              (dist / "SHA256SUMS").read_text().splitlines()}
    present = {str(p.relative_to(dist)) for p in dist.rglob("*")
               if p.is_file() and p.name != "SHA256SUMS"}
    assert listed == present
    assert {f"{NAME}/{NAME}", "container-desktop-relay/container-desktop-relay.exe"} <= listed
    assert any(n.endswith(".whl") for n in listed) and any(n.endswith(".tar.gz") for n in listed)
    check = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=dist,
                           capture_output=True, text=True, timeout=600 * FACTOR, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_dist_server_start_runs_no_compiler(dist_exe: Path, dist_keys: tuple[Path, Path],
                                            tmp_path: Path) -> None:
    """Starting the shipped server does not run gcc (ctypes.util.find_library's fallback,
    for asyncssh's liboqs probe: a dozen subprocesses at every start where gcc exists)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "gcc-ran"
    fake = bin_dir / "gcc"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {marker}\nexit 1\n")
    fake.chmod(0o755)
    proc = start_dist_server(dist_exe, dist_keys, free_port(), tmp_path / "server.log",
                             env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    proc.stop()
    assert not marker.exists(), marker.read_text()


def test_every_command_is_shipped(dist_exe: Path, tmp_path: Path) -> None:
    """The registry imports each command's module by name when it runs, which PyInstaller
    cannot follow: every one must be in the folder, and a command that needs its module
    (keygen, status) answers from the shipped program instead of a ModuleNotFoundError."""
    from container_desktop_relay.commands.registry import COMMANDS

    internal = dist_exe.parent / "_internal"
    for command in COMMANDS:
        module = command.entry.split(":")[0].replace(".", "/")
        shipped = [internal / f"{module}.pyc", internal / module / "__init__.pyc"]
        assert any(p.exists() for p in shipped), f"{command.name}: {module} is not shipped"
    keygen = subprocess.run([str(dist_exe), "keygen", "--print-public", "--identity-path",
                             str(tmp_path / "none")], env={"HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=120 * FACTOR, check=False)
    assert keygen.returncode == 2 and "does not exist" in keygen.stderr, keygen.stderr
    status = subprocess.run([str(dist_exe), "status", "--health-check-port", str(free_port())],
                            env={"HOME": str(tmp_path)}, capture_output=True, text=True,
                            timeout=120 * FACTOR, check=False)
    assert status.returncode == 2 and "no relay answers" in status.stderr, status.stderr
    assert "Traceback" not in keygen.stderr + status.stderr
