"""The PyInstaller executable (make dist) as the server of a real chain, with no Python around.

SSH client (asyncssh, as the client role uses it) → dist/container-desktop-relay-linux server
→ Unix socket. The executable runs with an empty environment (no PATH, no PYTHON*), so it can
only work if it carries its own interpreter. It is built when missing or older than src/.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

REPO = Path(__file__).resolve().parents[2]
EXE = REPO / "dist" / "container-desktop-relay-linux"
FACTOR = float(os.environ.get("CDR_TEST_TIMEOUT_FACTOR", "1"))


@pytest.fixture(scope="module")
def dist_exe() -> Path:
    """The executable, (re)built by scripts/build-dist.sh when missing or stale."""
    newest = max(p.stat().st_mtime for p in (REPO / "src").rglob("*.py"))
    if not EXE.exists() or EXE.stat().st_mtime < newest:
        subprocess.run(["bash", str(REPO / "scripts" / "build-dist.sh")],
                       env=dict(os.environ, PYTHON=os.environ.get("PYTHON", sys.executable)),
                       check=True, capture_output=True, timeout=600 * FACTOR)
    return EXE


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def dist_server(dist_exe: Path, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """The executable's keygen, then its server on a free port; yields (port, identity)."""
    identity, authorized = tmp_path / "id_rsa", tmp_path / "authorized_keys"
    bare = {"HOME": str(tmp_path)}
    subprocess.run([str(dist_exe), "keygen", "--identity-path", str(identity),
                    "--authorized-keys-path", str(authorized), "--log-level", "warn"],
                   env=bare, check=True, capture_output=True, timeout=120 * FACTOR)
    port = free_port()
    proc = subprocess.Popen(
        [str(dist_exe), "server", "--host", "127.0.0.1", "--port", str(port),
         "--identity-path", str(identity), "--authorized-keys-path", str(authorized),
         "--health-check-enabled", "false", "--metrics-enabled", "false", "--log-level", "info"],
        env=bare, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)
    lines: queue.Queue[bytes] = queue.Queue()
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr], daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60 * FACTOR
        while b'"server_listening"' not in lines.get(timeout=max(deadline - time.monotonic(), 0)):
            pass
        yield port, identity
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=10)
        proc.stderr.close()


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    digest, count = hashlib.sha256(), 0
    while chunk := await reader.read(65536):
        digest.update(chunk)
        count += len(chunk)
    writer.write(f"{digest.hexdigest()} {count}".encode())
    await writer.drain()
    writer.close()


async def _transfer(port: int, identity: Path, socket_path: str, size: int) -> tuple[str, str]:
    server = await asyncio.start_unix_server(_sink, socket_path)
    key = asyncssh.read_private_key(str(identity))
    known = asyncssh.import_known_hosts(
        f"[127.0.0.1]:{port} {key.export_public_key('openssh').decode().strip()}\n")
    try:
        async with asyncio.timeout(120 * FACTOR), asyncssh.connect(
                "127.0.0.1", port, username="relay", client_keys=[key],
                known_hosts=known) as conn:
            reader, writer = await conn.open_unix_connection(socket_path)
            digest = hashlib.sha256()
            for _ in range(size // 65536):
                chunk = os.urandom(65536)
                digest.update(chunk)
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()
            reply = (await reader.read()).decode()
            writer.close()
            return reply, f"{digest.hexdigest()} {size}"
    finally:
        server.close()
        await server.wait_closed()


def test_dist_executable_serves_a_chain_byte_exact(dist_server: tuple[int, Path],
                                                   tmp_path: Path) -> None:
    """8 MiB through the executable's server arrive intact, and the half-close gets through."""
    port, identity = dist_server
    reply, expected = asyncio.run(_transfer(port, identity, str(tmp_path / "sink.sock"),
                                            8 * 1024 * 1024))
    assert reply == expected
