"""The server role driven by a stock OpenSSH client (``ssh -N -L``), end to end."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from helpers import (
    EchoTarget,
    Keys,
    RelayServer,
    SendFirstTarget,
    exchange,
    make_ed25519,
    need_tool,
    sha,
    ssh_forward,
    stopping,
    tcp_open,
    unix_connect,
    wait_for,
)

pytestmark = pytest.mark.e2e

MiB = 1 << 20


def ssh_run(server: RelayServer, identity: Path, tmp: Path, *command: str,
            user: str = "tester", extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run the real ssh client against the relay server and return its result."""
    ssh = need_tool("ssh")
    return subprocess.run(
        [ssh, "-p", str(server.port), "-i", str(identity), "-o", "IdentitiesOnly=yes",
         "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={tmp}/known_hosts",
         "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", *extra, f"{user}@127.0.0.1",
         *command],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )


def test_64mib_each_way_byte_exact(relay_server: RelayServer, keys: Keys, echo: EchoTarget,
                                   tmp: Path) -> None:
    """64 MiB of random data through ssh -L and the server comes back sha256-identical."""
    payload = os.urandom(64 * MiB)
    fwd = ssh_forward(relay_server.port, keys.identity, tmp / "l.sock", str(echo.path), tmp)
    with stopping(fwd):
        total, digest = exchange(tmp / "l.sock", payload)
    assert total == len(payload) and digest == sha(payload)
    log = relay_server.proc.log()
    assert '"connection_closed"' in log and f'"bytes_up": {64 * MiB}' in log


def test_half_close_both_directions(relay_server: RelayServer, keys: Keys, tmp: Path) -> None:
    """Target EOF reaches the client while the client keeps sending, and vice versa."""
    down = os.urandom(3 * MiB)
    up = os.urandom(5 * MiB)
    target = SendFirstTarget(tmp / "first.sock", down)
    fwd = ssh_forward(relay_server.port, keys.identity, tmp / "l.sock", str(target.path), tmp)
    with stopping(fwd, target):
        # target -> client EOF first; the client then sends and half-closes.
        target.check_half_close_both_ways(tmp / "l.sock", up)


def test_client_half_close_keeps_responses_flowing(relay_server: RelayServer, keys: Keys,
                                                   echo: EchoTarget, tmp: Path) -> None:
    """After the client half-closes, the echo of everything it sent still arrives in full."""
    payload = os.urandom(8 * MiB)
    fwd = ssh_forward(relay_server.port, keys.identity, tmp / "l.sock", str(echo.path), tmp)
    with stopping(fwd):
        s = unix_connect(tmp / "l.sock", 30)
        s.sendall(payload[: 64 * 1024])  # small enough to fit socket buffers before reading
        s.shutdown(socket.SHUT_WR)
        got = b""
        while data := s.recv(MiB):
            got += data
        s.close()
    assert got == payload[: 64 * 1024]


def test_wrong_key_refused(relay_server: RelayServer, tmp: Path) -> None:
    """A key that is not authorized cannot log in, and the attempt is logged with the address."""
    other = make_ed25519(tmp / "other")
    result = ssh_run(relay_server, other, tmp, "true")
    assert result.returncode == 255 and "Permission denied" in result.stderr
    wait_for(lambda: '"ssh_login_failed"' in relay_server.proc.log(), 10, "login failure log")
    assert '"remote": "127.0.0.1:' in relay_server.proc.log()


def test_password_auth_not_offered(relay_server: RelayServer, keys: Keys, tmp: Path) -> None:
    """Only publickey is offered: a password-only client is refused."""
    result = ssh_run(relay_server, keys.identity, tmp, "true",
                     extra=("-o", "PreferredAuthentications=password,keyboard-interactive",
                            "-o", "PubkeyAuthentication=no"))
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr


def test_shell_and_exec_refused(relay_server: RelayServer, keys: Keys, tmp: Path) -> None:
    """`ssh host true` is refused with an SSH refusal naming why."""
    result = ssh_run(relay_server, keys.identity, tmp, "true")
    assert result.returncode == 255
    assert "administratively prohibited" in result.stderr
    assert "only forwards direct-streamlocal" in result.stderr


def test_tcp_forwarding_refused(relay_server: RelayServer, keys: Keys, tmp: Path) -> None:
    """direct-tcpip (-W) is refused."""
    result = ssh_run(relay_server, keys.identity, tmp, extra=("-W", "127.0.0.1:22"))
    assert result.returncode != 0
    assert "administratively prohibited" in result.stderr


def test_missing_target_closes_promptly(relay_server: RelayServer, keys: Keys,
                                        tmp: Path) -> None:
    """A channel to a socket that does not exist fails at open: the client sees EOF at once."""
    fwd = ssh_forward(relay_server.port, keys.identity, tmp / "l.sock", str(tmp / "nope.sock"),
                      tmp)
    with stopping(fwd):
        s = unix_connect(tmp / "l.sock", 10)
        started = time.monotonic()
        assert s.recv(1) == b""
        assert time.monotonic() - started < 5
        s.close()
        wait_for(lambda: "does not exist" in fwd.log(), 10, "ssh to report the refusal")
    assert "open failed: connect failed" in fwd.log()


def test_allowlist_refuses_other_paths(keys: Keys, echo: EchoTarget, tmp: Path) -> None:
    """With --allow-socket, other paths are refused as administratively prohibited."""
    server = RelayServer(keys, tmp, "--allow-socket", "/nowhere/*.sock")
    fwd = ssh_forward(server.port, keys.identity, tmp / "l.sock", str(echo.path), tmp)
    with stopping(server, fwd):
        s = unix_connect(tmp / "l.sock", 10)
        assert s.recv(1) == b""
        s.close()
        wait_for(lambda: "is not allowed" in fwd.log(), 10, "refusal reason at the client")
    assert "administratively prohibited" in fwd.log()
    assert echo.connections == 0


def test_max_connections_refusal_keeps_existing_streams(keys: Keys, echo: EchoTarget,
                                                        tmp: Path) -> None:
    """Beyond max_connections an open is refused with the documented reason; others go on."""
    server = RelayServer(keys, tmp, "--max-connections", "2")
    fwd = ssh_forward(server.port, keys.identity, tmp / "l.sock", str(echo.path), tmp)
    with stopping(server, fwd):
        held = []
        for _ in range(2):
            s = unix_connect(tmp / "l.sock", 10)
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
            held.append(s)
        extra = unix_connect(tmp / "l.sock", 10)
        assert extra.recv(1) == b""
        extra.close()
        wait_for(lambda: "connection pool exhausted (max: 2)" in fwd.log(), 10, "refusal")
        for s in held:
            s.sendall(b"still")
            assert s.recv(5) == b"still"
            s.close()


def test_authorized_keys_reread_per_connection(relay_server: RelayServer, keys: Keys,
                                               tmp: Path) -> None:
    """A key added to authorized_keys works on the next connection, without a restart."""
    other = make_ed25519(tmp / "rotated")
    assert ssh_run(relay_server, other, tmp, "true").returncode == 255
    assert "Permission denied" in ssh_run(relay_server, other, tmp, "true").stderr
    with open(keys.authorized_keys, "a") as fh:
        fh.write(Path(str(other) + ".pub").read_text())
    result = ssh_run(relay_server, other, tmp, "true")
    assert "administratively prohibited" in result.stderr  # authenticated, then refused exec


def test_allowed_users_list(keys: Keys, tmp: Path) -> None:
    """With --allowed-users, any other user name is refused even with the right key."""
    server = RelayServer(keys, tmp, "--allowed-users", "alice")
    with stopping(server):
        refused = ssh_run(server, keys.identity, tmp, "true", user="mallory")
        assert "Permission denied" in refused.stderr
        accepted = ssh_run(server, keys.identity, tmp, "true", user="alice")
        assert "administratively prohibited" in accepted.stderr
    assert '"ssh_user_not_allowed"' in server.proc.log()


def test_any_user_name_is_accepted_by_default(relay_server: RelayServer, keys: Keys,
                                              tmp: Path) -> None:
    """The key decides: a user name that does not exist here still gets in."""
    result = ssh_run(relay_server, keys.identity, tmp, "true", user="no-such-user-xyz")
    assert "administratively prohibited" in result.stderr


def test_graceful_shutdown_drains_then_exits_zero(keys: Keys, echo: EchoTarget,
                                                  tmp: Path) -> None:
    """SIGTERM: no new channels, active stream finishes byte-exact, exit 0, port released."""
    server = RelayServer(keys, tmp, "--shutdown-timeout", "30s")
    fwd = ssh_forward(server.port, keys.identity, tmp / "l.sock", str(echo.path), tmp)
    with stopping(server, fwd):
        s = unix_connect(tmp / "l.sock", 30)
        s.sendall(b"a" * 1000)
        assert s.recv(1000)
        server.proc.signal(signal.SIGTERM)
        wait_for(lambda: '"shutdown_requested"' in server.proc.log(), 10, "drain to start")
        late = unix_connect(tmp / "l.sock", 30)  # a new channel on the live SSH connection
        assert late.recv(1) == b""
        late.close()
        wait_for(lambda: "server is shutting down" in fwd.log(), 10, "the channel refusal")
        assert not tcp_open("127.0.0.1", server.port)  # no new SSH connections either
        payload = os.urandom(2 * MiB)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while data := s.recv(MiB):
            got += data
        s.close()
        assert sha(got) == sha(b"a" * 999 + payload) or got.endswith(payload)
        assert server.proc.wait(20) == 0
    log = server.proc.log()
    assert '"shutdown_complete"' in log and "Traceback" not in log
    assert log.count('"connection_opened"') == 1  # the refused channel never reached a target
    with socket.socket() as again:  # the port is released (TIME_WAIT aside: no listener)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", server.port))
        again.listen(1)


def test_second_signal_forces_exit(keys: Keys, echo: EchoTarget, tmp: Path) -> None:
    """A second SIGTERM ends the drain at once and closes what is left."""
    server = RelayServer(keys, tmp, "--shutdown-timeout", "10m")
    fwd = ssh_forward(server.port, keys.identity, tmp / "l.sock", str(echo.path), tmp)
    with stopping(server, fwd):
        s = unix_connect(tmp / "l.sock", 30)
        s.sendall(b"x")
        assert s.recv(1) == b"x"
        server.proc.signal(signal.SIGTERM)
        wait_for(lambda: '"shutdown_requested"' in server.proc.log(), 10, "drain")
        server.proc.signal(signal.SIGTERM)
        assert server.proc.wait(10) == 0
        assert s.recv(1) == b""
        s.close()
    assert '"shutdown_forced"' in server.proc.log()


def test_parent_watch_exits_when_parent_dies(keys: Keys, tmp: Path) -> None:
    """--watch-process-termination --parent-process-pid N: exits within a poll interval."""
    parent = subprocess.Popen(["sleep", "300"])
    try:
        server = RelayServer(keys, tmp, "--watch-process-termination",
                             "--parent-process-pid", str(parent.pid), "--poll-interval", "0.2")
        with stopping(server):
            assert server.proc.alive()
            parent.kill()
            parent.wait()
            assert server.proc.wait(10) == 0
        assert '"parent_gone"' in server.proc.log()
    finally:
        parent.kill()
        parent.wait()


def test_busy_port_is_a_clear_error(relay_server: RelayServer, keys: Keys, tmp: Path) -> None:
    """Listening on a port in use exits 1 with one line naming the address."""
    from helpers import run_relay

    result = run_relay("server", "--port", str(relay_server.port), "--identity-path",
                       str(keys.identity), "--authorized-keys-path", str(keys.authorized_keys),
                       "--log-level", "error", "--health-check-enabled=false",
                       "--metrics-enabled=false")
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{relay_server.port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_read_timeout_closes_idle_connection(keys: Keys, echo: EchoTarget, tmp: Path) -> None:
    """A forwarded connection idle past read_timeout is closed and the reason logged."""
    server = RelayServer(keys, tmp, "--read-timeout", "500ms")
    fwd = ssh_forward(server.port, keys.identity, tmp / "l.sock", str(echo.path), tmp)
    with stopping(server, fwd):
        s = unix_connect(tmp / "l.sock", 15)
        s.sendall(b"hi")
        assert s.recv(2) == b"hi"
        assert s.recv(1) == b""  # closed by the relay, not by us
        s.close()
        wait_for(lambda: "read_timeout" in server.proc.log(), 10, "timeout log")


def test_write_timeout_closes_stuck_peer(keys: Keys, tmp: Path) -> None:
    """A target that stops reading is cut off after write_timeout; memory stays bounded."""
    stuck = socket.socket(socket.AF_UNIX)
    stuck.bind(str(tmp / "stuck.sock"))
    stuck.listen(1)
    server = RelayServer(keys, tmp, "--write-timeout", "1s")
    fwd = ssh_forward(server.port, keys.identity, tmp / "l.sock", str(tmp / "stuck.sock"), tmp)
    with stopping(server, fwd, stuck):
        s = unix_connect(tmp / "l.sock", 30)
        accepted, _ = stuck.accept()
        chunk = b"w" * 65536
        # A reset or broken pipe: the relay cut us off. Not the socket's own 30 s timeout
        # (TimeoutError is an OSError too, so OSError alone would accept it).
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for _ in range(4096):  # 256 MiB at most; the relay must cut us off first
                s.sendall(chunk)
        wait_for(lambda: "write_timeout" in server.proc.log(), 15, "write timeout log")
        s.close()
        accepted.close()
    closed = [json.loads(line) for line in server.proc.log().splitlines()
              if '"connection_closed"' in line]
    assert [c["reason"] for c in closed if c["failed"]] == [
        "peer accepted no data for 1s (write_timeout)"], closed
