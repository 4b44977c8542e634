"""Linux side of the Windows tests: the Wine prefix, Windows programs, Unix-socket targets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
FACTOR = float(os.environ.get("CDR_TEST_TIMEOUT_FACTOR", "1"))


def scaled(seconds: float) -> float:
    """A deadline scaled by CDR_TEST_TIMEOUT_FACTOR."""
    return seconds * FACTOR


def winpath(path: Path | str) -> str:
    """The path as a Windows program under Wine sees it (Z: is the Linux root)."""
    return "Z:" + str(path).replace("/", "\\")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Wine:
    """A prepared Wine prefix with a Windows CPython, and a persistent wineserver."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.python = directory / "py" / "python.exe"
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.env.update(
            WINEPREFIX=str(directory / "prefix"),
            WINEDEBUG="-all",
            WINEDLLOVERRIDES="mscoree,mshtml=",
            PYTHONPYCACHEPREFIX=winpath(directory / "pycache"),
            PYTHONUNBUFFERED="1",
        )
        self._server: subprocess.Popen[bytes] | None = None
        #: The shipped client, dist/container-desktop-relay/container-desktop-relay.exe: set by
        #: :meth:`start`; ``python.exe -m container_desktop_relay`` commands run it instead.
        self.relay_exe: Path | None = None

    def start(self) -> None:
        """Build the shipped .exe when its inputs changed, then start a persistent wineserver
        and Wine's services, all with stdio on /dev/null.

        (Wine's helper processes inherit the stdio of the first wine call; a pipe there would
        never see EOF, and a regular file breaks Windows CPython's stdio. The build runs
        first: it stops this prefix's processes when it is done.)
        """
        self.relay_exe = ensure_windows_dist()
        self._server = subprocess.Popen(
            ["wineserver", "-f", "-p"], env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        subprocess.run(
            ["timeout", "-k", "5", str(scaled(60)), "wine", "cmd", "/c", "exit"], env=self.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            check=True,
        )

    def stop(self) -> None:
        """Stop every process of this prefix (wineserver -k) and the wineserver."""
        subprocess.run(["timeout", "30", "wineserver", "-k"], env=self.env,
                       stdin=subprocess.DEVNULL, capture_output=True, check=False)
        if self._server is not None:
            try:
                self._server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._server.pid, signal.SIGKILL)
                self._server.wait()

    def command(self, args: list[str], timeout: float) -> list[str]:
        """argv running Windows CPython with ``args`` under ``timeout``; the relay itself
        (``-m container_desktop_relay ...``) runs as the shipped .exe once it is built."""
        if self.relay_exe is not None and args[:2] == ["-m", "container_desktop_relay"]:
            return ["timeout", "-k", "5", str(timeout), "wine", str(self.relay_exe), *args[2:]]
        return ["timeout", "-k", "5", str(timeout), "wine", str(self.python), *args]

    def run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run Windows CPython to completion (stdio on pipes)."""
        return subprocess.run(
            self.command(args, scaled(timeout)), env=self.env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, check=False, timeout=scaled(timeout) + 15,
        )

    def run_json(self, args: list[str], timeout: float = 120) -> dict[str, Any]:
        """Run a Windows script that prints one JSON line; return it."""
        done = self.run(args, timeout)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        assert done.returncode == 0 and lines, (
            f"{args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
        return dict(json.loads(lines[-1]))


def find_wine_dir() -> Path:
    """Prepare (idempotently) and return the Wine directory; runs scripts/setup-wine.sh."""
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(["bash", str(REPO / "scripts" / "setup-wine.sh")], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=False, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"setup-wine.sh failed:\n{done.stdout}\n{done.stderr}")
    return Path(os.environ.get("CDR_WINE_DIR", REPO / ".cache" / "wine"))


def build_dist(artifact: str) -> None:
    """scripts/build-dist.sh ARTIFACT: builds it when its inputs changed (a no-op otherwise)."""
    done = subprocess.run(["bash", str(REPO / "scripts" / "build-dist.sh"), artifact],
                          env=dict(os.environ, PYTHON=os.environ.get("PYTHON", sys.executable)),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=False, timeout=scaled(1800))
    if done.returncode != 0:
        raise RuntimeError(f"build-dist.sh {artifact} failed:\n{done.stdout}\n{done.stderr}")


def ensure_dist() -> Path:
    """The shipped Linux relay, dist/container-desktop-relay-linux/container-desktop-relay-linux."""
    build_dist("linux")
    return REPO / "dist" / "container-desktop-relay-linux" / "container-desktop-relay-linux"


def ensure_windows_dist() -> Path:
    """The shipped Windows relay, dist/container-desktop-relay/container-desktop-relay.exe
    (PyInstaller under this Wine set-up; stops the prefix's processes when it builds)."""
    build_dist("windows")
    return REPO / "dist" / "container-desktop-relay" / "container-desktop-relay.exe"


def wine_available() -> bool:
    """Whether Wine is installed, or can be (root on Debian/Ubuntu)."""
    return shutil.which("wine") is not None or (os.geteuid() == 0 and bool(shutil.which("apt-get")))


class LineReader:
    """Collects a process's output lines on a thread, for waiting with a deadline."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait for the stream's end (the process exited)."""
        self._thread.join(timeout)

    def alive(self) -> bool:
        """Whether the stream is still open (someone still holds its write end)."""
        return self._thread.is_alive()

    def _pump(self, stream: Any) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.seen.append(line)
            self.lines.put(line)

    def wait_for(self, predicate: Any, timeout: float, what: str) -> str:
        """The first new line for which ``predicate`` holds; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {what} within {timeout:g}s; output:\n" +
                                   "\n".join(self.seen[-40:]))
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if predicate(line):
                return line


@dataclass
class Process:
    """A started process with its output readers."""

    popen: subprocess.Popen[bytes]
    out: LineReader
    err: LineReader

    @classmethod
    def start(cls, argv: list[str], env: dict[str, str] | None = None) -> Process:
        """Start ``argv`` in its own session, stdin on /dev/null, output read by threads."""
        popen = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 start_new_session=True)
        return cls(popen, LineReader(popen.stdout), LineReader(popen.stderr))

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after 10 s."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        for reader, stream in ((self.out, self.popen.stdout), (self.err, self.popen.stderr)):
            reader.join(timeout=10)
            # A leftover grandchild may still hold the pipe; closing it under the blocked
            # reader thread would deadlock, so such a stream is left to the daemon thread.
            if stream is not None and not reader.alive():
                stream.close()


@dataclass
class Record:
    """What one target connection saw."""

    kind: str
    received: int = 0
    sent: int = 0
    sent_sha: str = ""
    received_sha: str = ""
    after_eof: bytes = b""
    eof: bool = False


@dataclass
class Targets:
    """One Unix-socket target whose first line picks the behaviour, on a background loop.

    * ``echo``: writes back what follows; half-closes after the client's EOF.
    * ``sink``: reads to EOF, replies ``<sha256> <count>``, closes.
    * ``source N``: sends N random bytes, half-closes, then reads to EOF.
    * ``stall``: reads nothing until :meth:`release`, then behaves as ``sink``.
    * ``hold``: reads to EOF, then stays silent and open.
    A connection that sends no line (the client's readiness probe) is just closed.
    """

    directory: Path
    records: list[Record] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    servers: list[asyncio.Server] = field(default_factory=list)
    thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        """The socket path."""
        return str(self.directory / "mux.sock")

    def start(self) -> None:
        """Start the loop thread and the server."""
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(timeout=10)

    def stop(self) -> None:
        """Close the server, stop and close the loop."""
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        assert self.thread is not None
        self.thread.join(timeout=10)
        self.loop.close()

    def release(self) -> None:
        """Let ``stall`` connections read."""
        self.loop.call_soon_threadsafe(self._released.set)

    def done(self, kind: str) -> list[Record]:
        """Records of ``kind`` whose connection saw EOF."""
        return [r for r in list(self.records) if r.kind == kind and r.eof]

    async def _serve(self) -> None:
        self._released = asyncio.Event()
        self._shutdown = asyncio.Event()
        self.servers.append(
            await asyncio.start_unix_server(self._handle, self.path, backlog=1024))

    async def _close(self) -> None:
        self._shutdown.set()
        for server in self.servers:
            server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            words = (await reader.readline()).decode().split()
            if words:
                record = Record(words[0])
                self.records.append(record)
                behaviour = {"echo": self._echo, "sink": self._sink, "source": self._source,
                             "stall": self._stall, "hold": self._hold}
                await behaviour[words[0]](record, reader, writer, *words[1:])
        except (ConnectionError, KeyError):
            pass
        finally:
            writer.close()

    async def _echo(self, record: Record, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            record.received += len(chunk)
            writer.write(chunk)
            await writer.drain()
        record.eof = True
        writer.write_eof()

    async def _sink(self, record: Record, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        digest = hashlib.sha256()
        while chunk := await reader.read(65536):
            record.received += len(chunk)
            digest.update(chunk)
        record.received_sha = digest.hexdigest()
        record.eof = True
        writer.write(f"{digest.hexdigest()} {record.received}".encode())
        await writer.drain()

    async def _hold(self, record: Record, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            record.received += len(chunk)
        record.eof = True
        await self._shutdown.wait()  # a stored event: a pending task must stay referenced

    async def _stall(self, record: Record, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        await self._released.wait()
        await self._sink(record, reader, writer)

    async def _source(self, record: Record, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, size: str) -> None:
        digest = hashlib.sha256()
        left = int(size)
        while left:
            chunk = os.urandom(min(65536, left))
            digest.update(chunk)
            writer.write(chunk)
            await writer.drain()
            left -= len(chunk)
        record.sent, record.sent_sha = int(size), digest.hexdigest()
        writer.write_eof()
        record.after_eof = await reader.read()
        record.eof = True


def build_wsl_exe(target: Path, python_exe: Path) -> Path:
    """Pack wsl_standin.py into ``target`` (``wsl.exe``) with pip's Windows script launcher
    (distlib's t64.exe: launcher + ``#!python.exe`` + zip), as pip makes console scripts."""
    import zipfile
    from io import BytesIO

    from pip._vendor import distlib

    launcher = (Path(distlib.__file__).parent / "t64.exe").read_bytes()
    archive = BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("__main__.py", (HERE / "wsl_standin.py").read_text())
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(launcher + b"#!" + winpath(python_exe).encode() + b"\n"
                       + archive.getvalue())
    return target


@dataclass
class Spawned:
    """One program the agent ran for the stand-in wsl.exe."""

    distribution: str
    argv: list[str]
    proc: asyncio.subprocess.Process
    standin_gone: bool = False


@dataclass
class WslAgent:
    """The Linux side of the stand-in wsl.exe: runs the requested program, relays its output,
    stops it when the stand-in goes away. ``/mnt/z/...`` paths map to ``/...`` (Z: is /), and
    ``--parent-process-pid`` is replaced by :attr:`parent_pid` (the client's Linux PID)."""

    env: dict[str, str]
    spawned: list[Spawned] = field(default_factory=list)
    parent_pid: int | None = None
    port: int = 0
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    thread: threading.Thread | None = None
    server: asyncio.Server | None = None

    def start(self) -> None:
        """Listen on a free loopback port."""
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(timeout=10)

    def stop(self) -> None:
        """Stop every program it started, then the loop."""
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        assert self.thread is not None
        self.thread.join(timeout=10)
        self.loop.close()

    async def _listen(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        assert self.server is not None
        self.server.close()
        for spawned in self.spawned:
            await _stop_group(spawned.proc)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _linux_argv(self, argv: list[str]) -> list[str]:
        out = ["/" + a[len("/mnt/z/"):] if a.startswith("/mnt/z/") else a for a in argv]
        if "--parent-process-pid" in out and self.parent_pid is not None:
            out[out.index("--parent-process-pid") + 1] = str(self.parent_pid)
        return out

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = json.loads(await reader.readline())
        proc = await asyncio.create_subprocess_exec(
            *self._linux_argv(request["argv"]), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env,
            start_new_session=True)
        spawned = Spawned(request["distribution"], request["argv"], proc)
        self.spawned.append(spawned)

        async def relay(stream: asyncio.StreamReader | None, name: str) -> None:
            assert stream is not None
            while line := await stream.readline():
                writer.write((json.dumps({"stream": name, "data": line.decode(
                    errors="replace")}) + "\n").encode())
                with contextlib.suppress(ConnectionError):
                    await writer.drain()

        relays = asyncio.gather(relay(proc.stdout, "stdout"), relay(proc.stderr, "stderr"))
        gone = asyncio.ensure_future(reader.read())  # EOF: the stand-in wsl.exe died
        exited = asyncio.ensure_future(proc.wait())
        await asyncio.wait({gone, exited}, return_when=asyncio.FIRST_COMPLETED)
        if gone.done() and not exited.done():
            spawned.standin_gone = True
            await _stop_group(proc)
        else:
            await relays
            with contextlib.suppress(ConnectionError):
                writer.write((json.dumps({"exit": proc.returncode}) + "\n").encode())
                await writer.drain()
        gone.cancel()
        relays.cancel()
        writer.close()


async def _stop_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the process group, SIGKILL after 5 s."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 5)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


def child_pid(pid: int, timeout: float) -> int:
    """The (first) child of ``pid``: the wine process under ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children:
                return int(children[0])
        time.sleep(0.02)
    raise TimeoutError(f"process {pid} started no child within {timeout:g}s")


@dataclass
class PipeClient:
    """The relay client as a Windows program under Wine, serving one named pipe."""

    process: Process
    pipe: str  # \\.\pipe\NAME
    url: str  # npipe:////./pipe/NAME

    def stop(self) -> None:
        """Stop the wine process (its Windows process dies with it)."""
        self.process.stop()


def client_args(keys: Any, workdir: Path, port: int, remote: str, url: str,
                *extra: str) -> list[str]:
    """Arguments of ``python.exe -m container_desktop_relay client`` for this setup."""
    return ["-m", "container_desktop_relay", "client", "--named-pipe", url,
            "--ssh-connection", f"ssh://relay@127.0.0.1:{port}{remote}",
            "--identity-path", winpath(keys.identity),
            "--known-hosts-path", winpath(workdir / "known_hosts"),
            # the burst tests open 300 pipe connections at once: above the default pool (100)
            "--max-connections", "1000", "--log-level", "info", *extra]


def start_pipe_client(wine: Wine, keys: Any, workdir: Path, port: int, remote: str,
                      tag: str, *extra: str) -> PipeClient:
    """Run the relay client under Wine on pipe ``cdr-<tag>-<pid>``; wait for client_ready."""
    name = f"cdr-{tag}-{os.getpid()}"
    url = f"npipe:////./pipe/{name}"
    args = client_args(keys, workdir, port, remote, url, *extra)
    proc = Process.start(wine.command(args, scaled(1800)), env=wine.env)
    try:
        proc.err.wait_for(lambda ln: '"client_ready"' in ln, scaled(180), "client_ready")
    except BaseException:
        proc.stop()
        raise
    return PipeClient(proc, rf"\\.\pipe\{name}", url)
