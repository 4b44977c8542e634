"""Spawning the server through wsl.exe (a stand-in first on PATH runs it here), as the app does."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from clienthelp import install_wsl_standin, owned, pid_alive
from helpers import (
    EchoTarget,
    Keys,
    Proc,
    exchange,
    free_port,
    make_ed25519,
    relay_cmd,
    relay_env,
    sha,
    stopping,
    wait_for,
)

pytestmark = pytest.mark.e2e


class SpawningClient:
    """The client started with the desktop app's own flags plus a Unix socket to listen on."""

    def __init__(
        self,
        tmp: Path,
        echo: EchoTarget,
        *,
        identity: Path | None = None,
        program_args: str = "",
        extra: tuple[str, ...] = (),
        port_flag: bool = True,
    ) -> None:
        """``port_flag=False``: the SSH port only in --ssh-connection, no --port."""
        self.home = tmp / "home"
        self.home.mkdir(exist_ok=True)
        bindir, program = install_wsl_standin(tmp)
        if program_args:
            text = program.read_text().replace('"$@"', f'"$@" {program_args}')
            program.write_text(text)
        self.bindir = bindir
        self.port = free_port()
        self.socket = tmp / "c.sock"
        self.tid = tmp / "c.tid"
        self.identity = identity or self.home / ".ssh" / "id_rsa"
        env = relay_env(
            PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}",
            HOME=str(self.home),
            CDR_HEALTH_CHECK_ENABLED="false",
            CDR_METRICS_ENABLED="false",
        )
        args = [
            # the desktop app's invocation, unchanged ...
            "client",
            "--named-pipe",
            "npipe:////./pipe/container-desktop",
            "--ssh-connection",
            f"ssh://user@localhost:{self.port}{echo.path}",
            "--ssh-timeout",
            "15",
            "--identity-path",
            str(self.identity),
            "--distribution",
            "Test-Distro",
            "--relay-program-path",
            str(program),
            "--watch-process-termination",
            "--generate-key-pair",
            "--host",
            "localhost",
            *(("--port", str(self.port)) if port_flag else ()),
            # ... plus what a POSIX test needs
            "--listen",
            f"unix://{self.socket}",
            "--tid-path",
            str(self.tid),
            "--poll-interval",
            "200ms",
            "--log-level",
            "debug",
            *extra,
        ]
        self.proc = Proc(relay_cmd(*args), tmp / "client.log", env=env)

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(lambda: self.tid.exists() or not self.proc.alive(), timeout, "readiness")
        assert self.proc.alive(), self.proc.log()[-3000:]

    def events(self, name: str) -> list[dict[str, object]]:
        """The client's log records with event ``name``."""
        out = []
        for line in self.proc.log().splitlines():
            if f'"{name}"' in line:
                record = json.loads(line)
                if record.get("event") == name:
                    out.append(record)
        return out

    def server_pids(self) -> list[int]:
        return [int(str(r["pid"])) for r in self.events("server_spawned")]

    def stop(self) -> None:
        self.proc.stop()
        for pid in self.server_pids():  # never leave a server behind, even on failure
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_spawned_server_serves_and_dies_with_killed_client(
    request: pytest.FixtureRequest, echo: EchoTarget, tmp: Path
) -> None:
    """With --distribution/--relay-program-path the client runs the server via wsl.exe;
    SIGKILL of the client takes the server down too."""
    client = owned(request, SpawningClient(tmp, echo))
    with stopping(client):
        client.wait_ready()
        assert (client.bindir / "distribution").read_text().strip() == "Test-Distro"
        (server_pid,) = client.server_pids()
        assert pid_alive(server_pid)
        cmdline = Path(f"/proc/{server_pid}/cmdline").read_bytes().split(b"\0")
        assert b"server" in cmdline and str(client.proc.pid).encode() in cmdline
        assert b"--watch-process-termination" in cmdline
        payload = os.urandom(4 << 20)
        assert exchange(client.socket, payload) == (len(payload), sha(payload))
        # the key pair was generated, and the spawned server's key was expected, not recorded
        assert client.identity.exists() and (client.home / ".ssh" / "authorized_keys").exists()
        assert not (client.home / ".ssh" / "known_hosts").exists()
        assert client.events("server_output")  # the child's log lines are relayed
        client.proc.signal(signal.SIGKILL)
        client.proc.wait(10)  # reaped, as the app that started it would (else it is a zombie)
        wait_for(lambda: not pid_alive(server_pid), 15, "the server to exit after the client")


def test_spawned_server_listens_on_the_url_port(
    request: pytest.FixtureRequest, keys: Keys, echo: EchoTarget, tmp: Path
) -> None:
    """With the port only in --ssh-connection (no --port), the spawned server is started on
    that port, the one the client connects to: it becomes ready and relays."""
    client = owned(request, SpawningClient(tmp, echo, identity=keys.identity, port_flag=False))
    with stopping(client):
        client.wait_ready()
        (server_pid,) = client.server_pids()
        cmdline = Path(f"/proc/{server_pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[cmdline.index(b"--port") + 1] == str(client.port).encode()
        assert exchange(client.socket, b"one port") == (8, sha(b"one port"))


def test_spawned_server_stopped_on_graceful_exit(
    request: pytest.FixtureRequest, echo: EchoTarget, tmp: Path
) -> None:
    """SIGTERM: the client exits 0 and its server is gone by then; files are cleaned up."""
    client = owned(request, SpawningClient(tmp, echo))
    with stopping(client):
        client.wait_ready()
        (server_pid,) = client.server_pids()
        client.proc.signal(signal.SIGTERM)
        assert client.proc.wait(20) == 0
        assert not pid_alive(server_pid)
        assert not client.socket.exists() and not client.tid.exists()


def test_spawned_server_respawned_after_it_dies(
    request: pytest.FixtureRequest, echo: EchoTarget, tmp: Path
) -> None:
    """When the spawned server dies, the client reports it, starts a new one and reconnects."""
    client = owned(request, SpawningClient(tmp, echo))
    with stopping(client):
        client.wait_ready()
        (first,) = client.server_pids()
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: client.events("server_exited"), 10, "exit report")
        assert client.events("server_exited")[0]["exit_code"] == -signal.SIGKILL
        wait_for(lambda: len(client.events("client_ready")) >= 2, 30, "respawn + reconnect")
        assert len(client.server_pids()) == 2 and pid_alive(client.server_pids()[1])
        assert exchange(client.socket, b"after respawn") == (13, sha(b"after respawn"))


def test_spawned_server_with_other_host_key_is_refused(
    request: pytest.FixtureRequest, keys: Keys, echo: EchoTarget, tmp: Path
) -> None:
    """A spawned server must present the shared identity as host key; another one is refused."""
    other = make_ed25519(tmp / "other_host_key")
    client = owned(
        request,
        SpawningClient(tmp, echo, identity=keys.identity, program_args=f"--host-key-path {other}"),
    )
    with stopping(client):
        assert client.proc.wait(60) == 1
        log = client.proc.log()
        assert "must present its identity key" in log
        server_pids = client.server_pids()
        assert server_pids and not any(pid_alive(p) for p in server_pids)


def test_spawned_server_that_cannot_start_is_reported(
    request: pytest.FixtureRequest, keys: Keys, echo: EchoTarget, tmp: Path
) -> None:
    """A server that exits at once (here: a bad flag) makes the start-up fail with its status."""
    client = owned(
        request,
        SpawningClient(
            tmp, echo, identity=keys.identity, program_args="--port 0", extra=("--max-retries", "3")
        ),
    )
    assert client.proc.wait(60) == 1
    log = client.proc.log()
    assert "the spawned server exited with status 2" in log
    assert '"server_output"' in log and "invalid port=0" in log
