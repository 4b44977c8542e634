"""`doctor` against real processes: a healthy chain, then each failure mode with its fix."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from clienthelp import ClientProc
from helpers import (
    EchoTarget,
    Keys,
    Podman,
    Proc,
    RelayServer,
    free_port,
    make_ed25519,
    relay_cmd,
    relay_env,
    run_relay,
    wait_for,
)

pytestmark = pytest.mark.e2e

ORDER = ["config loads", "asyncssh patches", "identity key", "authorized_keys", "known_hosts",
         "server answers SSH", "authentication", "remote socket channel", "remote Docker API",
         "local endpoint", "observability"]


def doctor(keys: Keys, tmp: Path, port: int, remote: str, *extra: str,
           env: dict[str, str] | None = None) -> tuple[int, dict[str, dict[str, Any]]]:
    """Run ``doctor --json``; returns (exit status, checks by name)."""
    args = ["doctor", "--json", "--timeout", "5s",
            "--identity-path", str(keys.identity),
            "--authorized-keys-path", str(keys.authorized_keys),
            "--known-hosts-path", str(tmp / "known_hosts"),
            "--listen", f"unix://{tmp / 'client.sock'}",
            "--ssh-connection", f"ssh://tester@127.0.0.1:{port}{remote}", *extra]
    kw: dict[str, Any] = {"env": env} if env is not None else {}
    result = run_relay(*args, **kw)
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert [c["name"] for c in report["checks"]] == ORDER
    assert report["ok"] is (result.returncode == 0)
    return result.returncode, {c["name"]: c for c in report["checks"]}


def failed(checks: dict[str, dict[str, Any]]) -> list[str]:
    return [name for name, c in checks.items() if c["status"] == "FAIL"]


def test_healthy_chain_passes(podman: Podman, relay_server: RelayServer, keys: Keys,
                              tmp: Path) -> None:
    """Client → server → Podman: every check ok, exit 0, human output says so."""
    obs = ["--health-check-enabled", "--health-check-port", str(free_port()),
           "--metrics-enabled", "--metrics-port", str(free_port())]
    client = ClientProc(keys, tmp, relay_server.port, str(podman.socket), *obs)
    try:
        code, checks = doctor(keys, tmp, relay_server.port, str(podman.socket), *obs)
        assert code == 0, checks
        assert checks["observability"]["detail"].endswith("/metrics answer 200")
        assert all(c["status"] == "ok" for c in checks.values())
        assert "pins [127.0.0.1]" in checks["known_hosts"]["detail"]
        assert "answers GET /_ping with OK" in checks["remote Docker API"]["detail"]
        assert "end to end" in checks["local endpoint"]["detail"]
        assert "asyncssh_patches=all: 11 of 11 active" in checks["asyncssh patches"]["detail"]
        human = run_relay("doctor", "--identity-path", str(keys.identity),
                          "--authorized-keys-path", str(keys.authorized_keys),
                          "--known-hosts-path", str(tmp / "known_hosts"),
                          "--listen", f"unix://{client.socket}", "--ssh-connection",
                          f"ssh://tester@127.0.0.1:{relay_server.port}{podman.socket}")
        assert human.returncode == 0, human.stdout
        lines = human.stdout.splitlines()
        assert [ln.split(":")[0] for ln in lines[:-1]] == [f"ok    {n}" for n in ORDER]
        assert lines[-1] == "all checks passed"

        client.socket.chmod(0o666)
        code, checks = doctor(keys, tmp, relay_server.port, str(podman.socket))
        assert code == 1 and failed(checks) == ["local endpoint"]
        assert "has mode 0666" in checks["local endpoint"]["detail"]
        assert checks["local endpoint"]["fix"].startswith("chmod 600")
    finally:
        client.stop()


def test_working_client_flags_pass(podman: Podman, relay_server: RelayServer, keys: Keys,
                                   tmp: Path) -> None:
    """doctor given exactly the flags of a working client that does not spawn its server (no
    authorized_keys on this side) exits 0; authorized_keys is "not used"."""
    home = tmp / "home"
    home.mkdir()
    env = relay_env(HOME=str(home))
    client = ClientProc(keys, tmp, relay_server.port, str(podman.socket), env=env)
    try:
        assert podman.docker_cli(client.socket, "version").returncode == 0
        assert not any("authorized" in arg for arg in client.args)
        result = run_relay("doctor", "--json", *client.args, env=env)
        report = json.loads(result.stdout)
        checks = {c["name"]: c for c in report["checks"]}
        assert result.returncode == 0, checks
        assert [c["name"] for c in report["checks"]] == ORDER
        assert checks["authorized_keys"]["status"] == "ok"
        assert checks["authorized_keys"]["detail"].startswith(
            f"not used: this client does not spawn its server and {home}/.ssh/authorized_keys "
            "was not given")
        assert checks["observability"]["detail"].startswith("not enabled")
        assert not (home / ".ssh").exists()
    finally:
        client.stop()


def test_forwards_are_each_checked(podman: Podman, relay_server: RelayServer, keys: Keys,
                                   tmp: Path) -> None:
    """A client with two forwards: doctor with its flags checks both (exit 0); a forward whose
    remote socket is missing fails the channel step by name."""
    home = tmp / "home"
    home.mkdir()
    env = relay_env(HOME=str(home))
    a, b = tmp / "a.sock", tmp / "b.sock"
    common = ["--identity-path", str(keys.identity), "--known-hosts-path",
              str(tmp / "known_hosts"), "--ssh-connection",
              f"ssh://tester@127.0.0.1:{relay_server.port}"]
    flags = [*common, "--forward", f"unix://{a}={podman.socket}",
             "--forward", f"unix://{b}={podman.socket}"]
    client = Proc(relay_cmd("client", *flags, "--tid-path", str(tmp / "c.tid")),
                  tmp / "client.log", env=env)
    try:
        wait_for(lambda: (tmp / "c.tid").exists() or not client.alive(), 30, "client ready")
        assert client.alive(), client.log()
        result = run_relay("doctor", "--json", *flags, env=env)
        checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
        assert result.returncode == 0, checks
        assert checks["local endpoint"]["detail"].count("answers GET /_ping end to end") == 2
        assert str(a) in checks["local endpoint"]["detail"]
        assert str(b) in checks["local endpoint"]["detail"]
        missing = tmp / "missing.sock"
        result = run_relay("doctor", "--json", *common, "--forward", f"unix://{a}={podman.socket}",
                           "--forward", f"unix://{b}={missing}", env=env)
        checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
        assert result.returncode == 1 and failed(checks) == ["remote socket channel"]
        assert checks["remote socket channel"]["detail"].startswith(
            f"the server refused a channel to {missing} (forward unix://{b}): ")
    finally:
        client.stop()


def test_wrong_key(relay_server: RelayServer, echo: EchoTarget, tmp: Path) -> None:
    """An identity the server does not authorize: authentication fails with the keygen fix."""
    other = Keys(tmp / "other")
    code, checks = doctor(other, tmp, relay_server.port, str(echo.path))
    assert code == 1 and "authentication" in failed(checks)
    assert checks["server answers SSH"]["status"] == "ok"
    assert "refused the key" in checks["authentication"]["detail"]
    assert "container-desktop-relay keygen" in checks["authentication"]["fix"]
    assert checks["remote socket channel"]["status"] == "skip"


def test_stopped_server(keys: Keys, tmp: Path) -> None:
    """Nothing on the port: the SSH check fails with how to start the server."""
    port = free_port()
    code, checks = doctor(keys, tmp, port, "/run/x.sock")
    assert code == 1 and "server answers SSH" in failed(checks)
    assert "connection refused" in checks["server answers SSH"]["detail"]
    assert f"container-desktop-relay server --host 127.0.0.1 --port {port}" in \
        checks["server answers SSH"]["fix"]
    assert all(checks[n]["status"] == "skip" for n in
               ("authentication", "remote socket channel", "remote Docker API"))


def test_missing_remote_socket(relay_server: RelayServer, keys: Keys, tmp: Path) -> None:
    """The server logs in but the remote socket is absent: the channel check names it."""
    missing = tmp / "gone.sock"
    code, checks = doctor(keys, tmp, relay_server.port, str(missing))
    assert code == 1 and "remote socket channel" in failed(checks)
    assert checks["authentication"]["status"] == "ok"
    assert f"target socket {missing} does not exist" in checks["remote socket channel"]["detail"]
    assert "start the container engine" in checks["remote socket channel"]["fix"]


def test_remote_socket_is_not_docker(relay_server: RelayServer, keys: Keys, echo: EchoTarget,
                                     tmp: Path) -> None:
    """A socket that is not a Docker API (an echo server) fails the /_ping check."""
    code, checks = doctor(keys, tmp, relay_server.port, str(echo.path))
    assert code == 1 and checks["remote socket channel"]["status"] == "ok"
    assert checks["remote Docker API"]["status"] == "FAIL"
    assert "not HTTP" in checks["remote Docker API"]["detail"]


def test_stale_local_socket(relay_server: RelayServer, keys: Keys, echo: EchoTarget,
                            tmp: Path) -> None:
    """A socket file nobody listens on is reported stale, with the start command."""
    stale = tmp / "client.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(stale))
    sock.close()
    assert stale.exists()
    code, checks = doctor(keys, tmp, relay_server.port, str(echo.path))
    assert code == 1 and checks["local endpoint"]["status"] == "FAIL"
    assert "stale socket file" in checks["local endpoint"]["detail"]
    assert "container-desktop-relay client --listen" in checks["local endpoint"]["fix"]


def test_changed_host_key(relay_server: RelayServer, keys: Keys, echo: EchoTarget,
                          tmp: Path) -> None:
    """known_hosts pins another key for [127.0.0.1]:port: the change is named with the fix."""
    other = make_ed25519(tmp / "other_host_key")
    blob = Path(f"{other}.pub").read_text().split()[:2]
    (tmp / "known_hosts").write_text(f"[127.0.0.1]:{relay_server.port} {' '.join(blob)}\n")
    code, checks = doctor(keys, tmp, relay_server.port, str(echo.path))
    assert code == 1 and "server answers SSH" in failed(checks)
    assert checks["known_hosts"]["status"] == "ok"
    detail = checks["server answers SSH"]["detail"]
    assert f"host key of [127.0.0.1]:{relay_server.port} changed" in detail
    assert "ssh-keygen -R" in checks["server answers SSH"]["fix"]
    assert checks["authentication"]["status"] == "skip"


def test_revoked_pin_and_cert_authority(relay_server: RelayServer, keys: Keys,
                                        echo: EchoTarget, tmp: Path) -> None:
    """A pin whose key is @revoked fails known_hosts naming both lines; a @cert-authority
    line is shown as such, not as a pin."""
    label = f"[127.0.0.1]:{relay_server.port}"
    key = " ".join(keys.authorized_keys.read_text().split()[:2])  # the server's host key
    ca = " ".join(Path(f"{make_ed25519(tmp / 'ca')}.pub").read_text().split()[:2])
    (tmp / "known_hosts").write_text(f"{label} {key}\n@revoked * {key}\n")
    code, checks = doctor(keys, tmp, relay_server.port, str(echo.path))
    assert code == 1 and checks["known_hosts"]["status"] == "FAIL"
    assert "line 1 pins" in checks["known_hosts"]["detail"]
    assert "line 2 marks that key @revoked" in checks["known_hosts"]["detail"]
    assert checks["known_hosts"]["fix"].startswith("delete line 1")
    (tmp / "known_hosts").write_text(f"{label} {key}\n@cert-authority {label} {ca}\n")
    code, checks = doctor(keys, tmp, relay_server.port, str(echo.path))
    assert checks["known_hosts"]["status"] == "ok"
    assert "(line 1: ssh-rsa" in checks["known_hosts"]["detail"]
    assert "trusts host certificates from line 2: @cert-authority ssh-ed25519" in \
        checks["known_hosts"]["detail"]


def test_unknown_host_under_secure_host_key(relay_server: RelayServer, keys: Keys,
                                            echo: EchoTarget, tmp: Path) -> None:
    """--secure-host-key with an empty known_hosts fails with the ssh-keyscan fix."""
    code, checks = doctor(keys, tmp, relay_server.port, str(echo.path), "--secure-host-key")
    assert code == 1 and "known_hosts" in failed(checks)
    assert "ssh-keyscan -p" in checks["known_hosts"]["fix"]


def test_key_problems(relay_server: RelayServer, keys: Keys, echo: EchoTarget,
                      tmp: Path) -> None:
    """An open private key and an authorized_keys without it are both reported with fixes."""
    keys.identity.chmod(0o644)
    keys.authorized_keys.write_text("")
    code, checks = doctor(keys, tmp, relay_server.port, str(echo.path))
    assert code == 1
    assert checks["identity key"]["fix"] == f"chmod 600 {keys.identity}"
    assert checks["authorized_keys"]["status"] == "skip"
    keys.identity.chmod(0o600)
    code, checks = doctor(keys, tmp, relay_server.port, str(echo.path))
    assert checks["authorized_keys"]["status"] == "FAIL"
    assert "--authorized-keys-path" in checks["authorized_keys"]["fix"]
    keys.authorized_keys.chmod(0o666)
    code, checks = doctor(keys, tmp, relay_server.port, str(echo.path))
    assert "is writable by group/others" in checks["authorized_keys"]["detail"]
    assert checks["authorized_keys"]["fix"] == f"chmod go-w {keys.authorized_keys}"
    pub = f"{keys.identity}.pub"  # the public half passed as the identity: named as such
    code, checks = doctor(keys, tmp, relay_server.port, str(echo.path), "--identity-path", pub)
    assert f"identity key {pub} is a public key" in checks["identity key"]["detail"]
    assert checks["identity key"]["fix"] == f"pass the private key: --identity-path {keys.identity}"


def test_restricted_identity_line_is_reported(relay_server: RelayServer, keys: Keys,
                                              echo: EchoTarget, tmp: Path) -> None:
    """An identity line with no-port-forwarding fails the authorized_keys check (and the
    channel check, which the server refuses with the same reason)."""
    line = keys.authorized_keys.read_text()
    keys.authorized_keys.write_text("# Jos\xe9\nno-port-forwarding " + line)
    code, checks = doctor(keys, tmp, relay_server.port, str(echo.path))
    assert code == 1 and checks["authorized_keys"]["status"] == "FAIL"
    assert "line 2 lists the identity's public key, but port forwarding is disabled by " \
        "no-port-forwarding" in checks["authorized_keys"]["detail"]
    assert "port forwarding is disabled" in checks["remote socket channel"]["detail"]


def test_bad_config_and_dead_observability(keys: Keys, tmp: Path) -> None:
    """A bad CDR_ value fails the first check (exit 1); a health port with nobody on it fails
    the observability check; a bad doctor flag is exit 2."""
    from helpers import relay_env

    code, checks = doctor(keys, tmp, free_port(), "/x.sock", env=relay_env(CDR_BUFFER_SIZE="12"))
    assert code == 1 and failed(checks) == ["config loads"]
    assert "invalid buffer_size=12 from CDR_BUFFER_SIZE" in checks["config loads"]["detail"]
    assert all(c["status"] == "skip" for n, c in checks.items() if n != "config loads")

    code, checks = doctor(keys, tmp, free_port(), "/x.sock",
                          env=relay_env(CDR_ASYNCSSH_PATCHES="none"))
    detail = checks["asyncssh patches"]["detail"]
    assert checks["asyncssh patches"]["status"] == "ok", detail
    assert "asyncssh_patches=none: 0 of 11 active; not applied: window-credit" in detail

    port = free_port()
    code, checks = doctor(keys, tmp, free_port(), "/x.sock", "--health-check-enabled",
                          "--health-check-port", str(port))
    assert checks["observability"]["status"] == "FAIL"
    assert f"127.0.0.1:{port}/ready does not answer" in checks["observability"]["detail"]

    code, checks = doctor(keys, tmp, free_port(), "/x.sock", "--health-check-enabled",
                          "--health-check-port", "0")
    assert checks["observability"]["status"] == "ok"
    assert "/health, /ready not checked: port 0" in checks["observability"]["detail"]

    bad = run_relay("doctor", "--bogus")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_doctor_leaves_no_failed_login_on_the_server(request: pytest.FixtureRequest,
                                                     keys: Keys, tmp: Path) -> None:
    """doctor's host-key check connects and leaves without logging in: the server logs that
    at debug, not as ssh_login_failed, and counts no connection error (the missing remote
    socket here is the one error, a socket error)."""
    from clienthelp import owned
    from obs_helpers import get_json

    obs = free_port()
    missing = tmp / "gone.sock"
    server = owned(request, RelayServer(keys, tmp, "--health-check-enabled",
                                        "--health-check-port", str(obs),
                                        "--metrics-enabled", "--metrics-port", str(obs)))
    try:
        for _ in range(2):
            _, checks = doctor(keys, tmp, server.port, str(missing))
            assert checks["server answers SSH"]["status"] == "ok"
            assert checks["authentication"]["status"] == "ok"
        def ended() -> int:
            log = server.proc.log()
            return log.count('"ssh_connection_closed"') + log.count('"ssh_login_failed"')
        wait_for(lambda: ended() >= 4, 10, "both doctor runs' connections to end on the server")
        log = server.proc.log()
        assert '"ssh_login_failed"' not in log, log
        probes = [json.loads(line) for line in log.splitlines()
                  if '"closed before any login attempt' in line]
        assert len(probes) == 2 and {p["level"] for p in probes} == {"debug"}
        _, metrics = get_json(obs, "/metrics")
        assert metrics["connection_errors"] == 0 and metrics["socket_errors"] == 2, metrics
        _, health = get_json(obs, "/health")
        assert health["last_error"] == f"target socket {missing} does not exist", health
    finally:
        server.stop()
