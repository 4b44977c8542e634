"""Shared test machinery: real processes (relay, sshd, Podman), targets, waits with deadlines."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
TRUTHY = ("1", "true", "yes", "on")


def under_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the tests run under CI: any truthy ``CI`` (1, true, yes, on; any case)."""
    return environ.get("CI", "").strip().lower() in TRUTHY


CI = under_ci()
FACTOR = float(os.environ.get("CDR_TEST_TIMEOUT_FACTOR", "1"))


def need_tool(name: str, *candidates: str) -> str:
    """Path of tool ``name``; fails the test under CI when missing, skips it elsewhere."""
    for candidate in (*candidates, name):
        found = shutil.which(candidate) or (candidate if os.path.isabs(candidate)
                                            and os.access(candidate, os.X_OK) else None)
        if found:
            return found
    skip_or_fail(f"{name} is not installed", "run scripts/setup-system.sh")


def skip_or_fail(message: str, fix: str = "") -> NoReturn:
    """Skip the test with ``message``, or fail it under CI: the one skip path of the suite.

    Every test that cannot run here comes through this function, so CI (any truthy ``CI``)
    never passes by skipping; tests/unit/test_no_silent_skip.py checks that no other exists.
    """
    if under_ci():
        pytest.fail(f"{message}; CI requires it" + (f" ({fix})" if fix else ""))
    pytest.skip(message)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` (scaled) passes."""
    deadline = time.monotonic() + timeout * FACTOR
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout * FACTOR:g}s waiting for {what}")
        time.sleep(interval)


def record(kind: str, what: str, runs: int, outcome: str, silently_lost: int = 0) -> None:
    """Append one row to the reliability report when CDR_REPORT names a file (make soak)."""
    import json

    path = os.environ.get("CDR_REPORT")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"kind": kind, "what": what, "runs": runs, "outcome": outcome,
                                 "silently_lost": silently_lost}) + "\n")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def short_tmpdir() -> Path:
    """A fresh directory with a short path (AF_UNIX paths must stay under ~100 bytes)."""
    return Path(tempfile.mkdtemp(prefix="cdr", dir="/tmp"))


def tcp_open(host: str, port: int) -> bool:
    """Whether a TCP connect to host:port succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def unix_open(path: str | Path) -> bool:
    """Whether a connect to the Unix socket succeeds now."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(0.5)
            s.connect(str(path))
            return True
    except OSError:
        return False


def relay_env(**extra: str) -> dict[str, str]:
    """Environment for relay subprocesses: this checkout's src first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                    else "")
    env.pop("CDR_CONFIG", None)
    env.update(extra)
    return env


def relay_cmd(*args: str) -> list[str]:
    """The relay's command line, run from this checkout."""
    return [sys.executable, "-m", "container_desktop_relay", *args]


def run_relay(*args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a short relay command to completion."""
    return subprocess.run(relay_cmd(*args), env=kw.pop("env", relay_env()), text=True,
                          capture_output=True, timeout=timeout * FACTOR, stdin=subprocess.DEVNULL,
                          **kw)


def fatal(stderr: str, exit_status: int) -> str:
    """The message of the ``fatal`` event a failed run ends with. Every stderr line must be a
    JSON object, the fatal one last (and only once), carrying ``exit_status``."""
    records = []
    for line in stderr.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"stderr line is not JSON: {line!r}") from None
    assert records and records[-1].get("event") == "fatal", stderr
    last = records[-1]
    assert last["level"] == "error" and last["exit_status"] == exit_status, last
    assert [r for r in records if r.get("event") == "fatal"] == [last], stderr
    return str(last["message"])


class Proc:
    """A background process with its output in a log file; stopped for sure by :meth:`stop`."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.argv = argv
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    def wait(self, timeout: float = 10) -> int:
        return self.popen.wait(timeout * FACTOR)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; also kills the process group."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGCONT)
                os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout * FACTOR)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._log.close()
        return self.popen.returncode


class Keys:
    """An RSA 4096 identity made by the relay's own keygen, plus its authorized_keys."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.identity = directory / "id_rsa"
        self.authorized_keys = directory / "authorized_keys"
        result = run_relay("keygen", "--identity-path", str(self.identity),
                           "--authorized-keys-path", str(self.authorized_keys),
                           "--log-level", "error")
        assert result.returncode == 0, result.stderr

    def copy_to(self, directory: Path) -> Keys:
        """The same key pair in another directory (authorized_keys included)."""
        directory.mkdir(parents=True, exist_ok=True)
        for f in (self.identity, self.identity.with_suffix(".pub"), self.authorized_keys):
            shutil.copy2(f, directory / f.name)
        clone = object.__new__(Keys)
        clone.dir = directory
        clone.identity = directory / "id_rsa"
        clone.authorized_keys = directory / "authorized_keys"
        return clone


def make_ed25519(path: Path) -> Path:
    """A fresh ed25519 private key at ``path`` (OpenSSH format, 0600)."""
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(path))
    os.chmod(path, 0o600)
    key.write_public_key(str(path) + ".pub")
    return path


class RelayServer:
    """The relay's server role as a real process on a free loopback port."""

    def __init__(self, keys: Keys, workdir: Path, *extra: str, port: int | None = None,
                 env: dict[str, str] | None = None, wait: bool = True,
                 observability: bool = False) -> None:
        """``observability``: leave /health, /ready and /metrics at their defaults (on, on
        ports derived from the SSH port) instead of turning them off."""
        self.keys = keys
        self.port = port or free_port()
        self.workdir = workdir
        quiet = [] if observability else ["--health-check-enabled=false",
                                          "--metrics-enabled=false"]
        args = ["server", "--host", "127.0.0.1", "--port", str(self.port),
                "--identity-path", str(keys.identity),
                "--authorized-keys-path", str(keys.authorized_keys),
                *quiet, "--log-level", "debug", *extra]
        self.proc = Proc(relay_cmd(*args), workdir / f"server-{self.port}.log",
                         env=env or relay_env())
        if wait:
            try:
                self.wait_listening()
            except BaseException:
                self.proc.stop()
                raise

    def wait_listening(self, timeout: float = 20) -> None:
        wait_for(lambda: '"server_listening"' in self.proc.log() or not self.proc.alive(),
                 timeout, "relay server to listen")
        assert self.proc.alive(), f"relay server exited:\n{self.proc.log()}"

    def stop(self) -> int | None:
        return self.proc.stop()


class Sshd:
    """A real OpenSSH sshd on a free loopback port, key auth only, streamlocal allowed."""

    def __init__(self, workdir: Path, authorized_keys: Path, host_key: Path | None = None,
                 extra_config: str = "") -> None:
        sshd = need_tool("sshd", "/usr/sbin/sshd")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.port = free_port()
        self.workdir = workdir
        self.host_key = host_key or make_ed25519(workdir / "sshd_host_key")
        config = workdir / "sshd_config"
        # sshd only allows direct-streamlocal opens when local TCP forwarding is allowed too
        # (channel_permit_all(FORWARD_LOCAL) depends on AllowTcpForwarding), hence "local".
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"AuthorizedKeysFile {authorized_keys}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "AllowStreamLocalForwarding yes\nAllowTcpForwarding local\nPermitRootLogin yes\n"
            f"PidFile {workdir}/sshd.pid\nLogLevel VERBOSE\nStreamLocalBindUnlink yes\n"
            "MaxSessions 1000\nMaxStartups 100:30:200\n" + extra_config
        )
        self.proc = Proc([sshd, "-D", "-e", "-f", str(config)], workdir / "sshd.log")
        try:
            wait_for(lambda: tcp_open("127.0.0.1", self.port) or not self.proc.alive(), 10,
                     "sshd to listen")
            assert self.proc.alive(), self.proc.log()
        except BaseException:
            self.proc.stop()
            raise

    def stop(self) -> None:
        self.proc.stop()


def ssh_forward(port: int, identity: Path, local: Path, remote: str, workdir: Path,
                user: str = "tester", *extra: str) -> Proc:
    """``ssh -N -L local:remote`` (real OpenSSH) through a server on 127.0.0.1:port."""
    ssh = need_tool("ssh")
    argv = [ssh, "-N", "-v", "-p", str(port), "-i", str(identity), "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={workdir}/known_hosts",
            "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
            "-o", "StreamLocalBindUnlink=yes", "-L", f"{local}:{remote}", *extra,
            f"{user}@127.0.0.1"]
    proc = Proc(argv, workdir / f"ssh-{local.name}.log")
    try:
        # The socket file appears at bind(); "listening on" is logged after listen().
        wait_for(lambda: f"Local forwarding listening on path {local}" in proc.log()
                 or not proc.alive(), 20, "ssh -L socket")
        assert proc.alive(), proc.log()
    except BaseException:
        proc.stop()
        raise
    return proc


# ---------------------------------------------------------------- targets
def closed_events(log: str) -> list[dict[str, Any]]:
    """The relay's connection_closed log events, in order."""
    return [json.loads(line) for line in log.splitlines() if '"connection_closed"' in line]


class UnixTarget:
    """A Unix-socket server for tests: a thread accepts, a thread per connection runs
    :meth:`_serve`. Subclasses set what ``_serve`` records before calling ``__init__``."""

    def __init__(self, path: Path, backlog: int = 64) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.bind(str(path))
        self._sock.listen(backlog)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed: stop accepting
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop listening (connections already accepted go on)."""
        self._sock.close()


class EchoTarget(UnixTarget):
    """Unix-socket echo server: echoes until EOF, then half-closes and closes."""

    def __init__(self, path: Path) -> None:
        self.connections = 0
        self._live: set[socket.socket] = set()
        super().__init__(path, backlog=1024)

    def _serve(self, conn: socket.socket) -> None:
        self.connections += 1
        self._live.add(conn)
        with conn:
            try:
                while data := conn.recv(1 << 18):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self._live.discard(conn)

    def close(self) -> None:
        super().close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def crash(self) -> None:
        """Die like an engine process: stop listening and reset every live connection."""
        self.close()
        for conn in list(self._live):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class SendFirstTarget(UnixTarget):
    """Unix-socket target that sends ``payload``, half-closes, then hashes all it receives."""

    def __init__(self, path: Path, payload: bytes) -> None:
        self.payload = payload
        self.received: list[tuple[int, str]] = []
        super().__init__(path)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            digest = hashlib.sha256()
            total = 0
            try:
                conn.sendall(self.payload)
                conn.shutdown(socket.SHUT_WR)
                while data := conn.recv(1 << 18):
                    digest.update(data)
                    total += len(data)
            except OSError:  # a peer that leaves early (the client's readiness probe)
                return
            self.received.append((total, digest.hexdigest()))

    def check_half_close_both_ways(self, local: Path, up: bytes) -> None:
        """Through the forwarder at ``local``: this target's payload and EOF arrive while the
        client's write side is still open; then ``up`` and the client's EOF reach the target."""
        s = unix_connect(local, 30)
        got = b""
        while data := s.recv(1 << 20):
            got += data
        assert got == self.payload  # EOF arrived while our write side is still open
        s.sendall(up)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(1) == b""
        s.close()
        wait_for(lambda: self.received, 20, "target to receive the upload")
        assert self.received[0] == (len(up), hashlib.sha256(up).hexdigest())


def unix_connect(path: Path | str, timeout: float = 10) -> socket.socket:
    """A blocking AF_UNIX client socket connected to ``path`` (timeout scaled by FACTOR)."""
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(timeout * FACTOR)
    try:
        sock.connect(str(path))
    except BaseException:
        sock.close()
        raise
    return sock


def exchange(path: Path, payload: bytes, timeout: float = 60,
             strict: bool = True) -> tuple[int, str]:
    """Connect to ``path``, send ``payload`` while reading, half-close, read to EOF.

    Returns (bytes received, sha256 hex of them). With ``strict``, a failed send raises.
    """
    sock = unix_connect(path, timeout)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            view = memoryview(payload)
            for i in range(0, len(view), 1 << 20):
                sock.sendall(view[i:i + (1 << 20)])
            sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    digest = hashlib.sha256()
    total = 0
    try:
        while data := sock.recv(1 << 20):
            digest.update(data)
            total += len(data)
        thread.join(timeout * FACTOR)
    finally:
        sock.close()
    if errors and strict:
        raise errors[0]
    return total, digest.hexdigest()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- podman
CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n'


class Podman:
    """Podman's Docker-compatible API service on a private socket, with a busybox image."""

    IMAGE = "bb:latest"

    def __init__(self, workdir: Path) -> None:
        podman = need_tool("podman")
        self.docker = need_tool("docker")
        busybox = need_tool("busybox", "/bin/busybox", "/usr/bin/busybox")
        need_tool("runc", "/usr/sbin/runc", "/usr/bin/runc")
        self.workdir = workdir
        conf = workdir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = dict(os.environ, CONTAINERS_CONF=str(conf))
        self.socket = workdir / "podman.sock"
        self.proc = Proc([podman, "--root", str(workdir / "root"), "--runroot",
                          str(workdir / "runroot"), "system", "service", "--time=0",
                          f"unix://{self.socket}"], workdir / "podman.log", env=self.env)
        try:
            wait_for(lambda: ping(self.socket) or not self.proc.alive(), 60, "podman API")
            assert self.proc.alive(), self.proc.log()
            self._import_busybox(busybox)
        except BaseException:
            self.proc.stop()
            raise

    def _import_busybox(self, busybox: str) -> None:
        rootfs = self.workdir / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy2(busybox, rootfs / "bin" / "busybox")
        for tool in ("sh", "wc", "cat", "echo", "sleep", "head", "seq", "yes", "true",
                     "sha256sum"):
            (rootfs / "bin" / tool).symlink_to("busybox")
        tarball = self.workdir / "bb.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
        result = self.docker_cli(self.socket, "import", str(tarball), self.IMAGE)
        assert result.returncode == 0, result.stderr

    def docker_cli(self, sock: Path, *args: str, input: bytes | None = None,
                   timeout: float = 120) -> subprocess.CompletedProcess[Any]:
        """Run the docker CLI against ``sock``."""
        env = dict(os.environ, DOCKER_HOST=f"unix://{sock}")
        env.pop("DOCKER_CONTEXT", None)
        return subprocess.run([self.docker, *args], env=env, input=input,
                              capture_output=True, timeout=timeout * FACTOR,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.stop(timeout=20)


def ping(sock: Path) -> bool:
    """Whether a Docker API socket answers ``GET /_ping`` with ``OK``."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        return data.startswith(b"HTTP/1.1 200") and data.endswith(b"OK")
    except OSError:
        return False


class PeakRss:
    """Samples the RSS of processes every 20 ms while running: the peak during an operation,
    not one reading after it (memory freed at the end would hide the growth)."""

    def __init__(self, *pids: int) -> None:
        import psutil

        self.procs = [psutil.Process(pid) for pid in pids]
        self.base = [p.memory_info().rss for p in self.procs]
        self.peak = list(self.base)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for i, proc in enumerate(self.procs):
                with contextlib.suppress(Exception):
                    self.peak[i] = max(self.peak[i], proc.memory_info().rss)
            self.samples += 1
            self._stop.wait(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def growth_mib(self) -> list[float]:
        """Peak minus baseline per process, in MiB."""
        return [(peak - base) / (1 << 20) for base, peak in zip(self.base, self.peak,
                                                                strict=True)]


@contextlib.contextmanager
def log_records(name: str, level: int) -> Iterator[list[logging.LogRecord]]:
    """The records logger ``name`` emits at ``level`` and above while the block runs, whatever
    configuration earlier tests left on the loggers (no propagation needed, unlike caplog)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@contextlib.contextmanager
def stopping(*things: Any) -> Iterator[None]:
    """Stop every given object (``.stop()`` / ``.close()``) on exit, even on failure."""
    try:
        yield
    finally:
        for thing in reversed(things):
            with contextlib.suppress(Exception):
                (getattr(thing, "stop", None) or thing.close)()


class FakeEnd:
    """Records what the pump does to one side."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.eof = False
        self.paused = False
        self.closed = False
        self.aborted = False
        self.queue = 0  # written but not yet accepted by the (imaginary) peer
        self.holding = False  # True: the peer accepts nothing until accept() is called

    def write(self, data: bytes) -> int:
        self.written.append(bytes(data))
        if self.holding:
            self.queue += len(data)
        return self.queue

    def queued(self) -> int:
        return self.queue

    def backlog(self) -> int:
        return self.queue

    def accept(self, n: int) -> None:
        """The peer takes ``n`` queued bytes."""
        self.queue -= n

    def write_eof(self) -> None:
        self.eof = True

    def finish(self) -> None:
        self.write_eof()
        self.close()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True
