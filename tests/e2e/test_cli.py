"""The command line as users meet it: exit codes, one-line errors, help, bare form."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from container_desktop_relay.commands.registry import COMMANDS
from helpers import (
    EchoTarget,
    Keys,
    Proc,
    RelayServer,
    fatal,
    relay_cmd,
    relay_env,
    run_relay,
    stopping,
    wait_for,
)

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["server", "--port", "0"], "invalid port=0"),
        (["server", "--bogus"], "unrecognized arguments: --bogus"),
        (["server", "--port"], "expected one argument"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["stauts", "--json"], "unknown command 'stauts'; did you mean 'status'?"),
        (["--buffer-size", "12"], "invalid buffer_size=12"),
        (["server", "--log-level", "verbose"], "invalid log_level=verbose"),
        (["client", "--ssh-connection", ""], "invalid ssh_connection= from --ssh-connection "
                                             "(empty): must be ssh://user@host:port/"),
        (["client", "--listen=", "--ssh-connection", "ssh://u@127.0.0.1:1"],
         "invalid listen= from --listen (empty)"),
        (["install-service", "--unit-dir", "/nonexistent/units"],
         "invalid --unit-dir /nonexistent/units: no such directory; create it first"),
        (["docker-context", "ctx"], "cannot listen on npipe:////./pipe/container-desktop: "
                                    "named pipes exist only on Windows; use --listen unix://"),
        (["server", "-max-conn", "0"], "--max-conn 0; did you mean --max-connections?"),
        (["server", "--max-conn", "0"], "--max-conn 0; did you mean --max-connections?"),
        (["client", "--allow-socket", "/x"],
         "--allow-socket is a server flag; the client does not use it"),
        (["server", "--listen", "unix:///tmp/x.sock", "--ssh-connection", "ssh://u@h/x"],
         "--listen is a client flag; the server does not use it"),
        (["keygen", "-port", "20122"], "--port is a server and client flag; keygen does not"),
        (["status", "--create"], "--create is a docker-context flag; status does not use it"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    """Bad flags exit 2 with one JSON fatal line naming the problem and no traceback; usage
    errors found before logging starts are JSON too."""
    result = run_relay(*args)
    assert result.returncode == 2
    assert needle in fatal(result.stderr, 2)
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.count("container-desktop-relay") <= 2  # the prefix, a --help hint
    assert "Traceback" not in result.stderr
    assert not Path("/nonexistent").exists()  # install-service made no directory


def test_unknown_command_names_the_program_once() -> None:
    """An unknown command is one line with the program's name once and the closest command."""
    result = run_relay("sever", "--port", "20022")
    assert result.returncode == 2 and result.stdout == ""
    assert fatal(result.stderr, 2) == ("unknown command 'sever'; did you mean 'server'? "
                                       "(--help lists them)")
    assert "container-desktop-relay" not in result.stderr  # the JSON line needs no prefix


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_go_help_spelling_for_every_command(command: str) -> None:
    """`COMMAND -help` prints the command's help and exits 0, as --help and -h do."""
    for spelling in ("-help", "-h", "--help"):
        result = run_relay(command, spelling)
        assert result.returncode == 0 and result.stderr == "", (spelling, result.stderr)
        assert result.stdout.startswith(f"usage: container-desktop-relay {command}")


def test_go_spelling_of_a_commands_own_flag(tmp: Path) -> None:
    """`doctor -json` (as the README promises for every flag) runs and prints JSON."""
    result = run_relay("doctor", "-json", "-identity-path", str(tmp / "none"),
                       "-listen", f"unix://{tmp}/relay.sock", "-timeout=1s")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["checks"]


@pytest.mark.parametrize("level", ["INFO", "warning", "Warning", "ERROR"])
def test_log_level_flag_takes_what_log_level_takes(tmp: Path, level: str) -> None:
    """--log-level accepts LOG_LEVEL's values in any case, and warning as warn."""
    result = run_relay("keygen", "--identity-path", str(tmp / "id_rsa"),
                       "--authorized-keys-path", str(tmp / "ak"), f"-log-level={level}")
    assert result.returncode == 0, result.stderr
    assert "private key" in result.stdout


@pytest.mark.parametrize(("content", "needle"), [
    ('{"port": 20022, "buffer_size": 8192,}', "is not valid JSON: trailing comma at line 1 "
                                               "column 36; remove it"),
    ('{"port": "20422"}', "invalid port=20422 from config file {cfg} (a JSON string: write the "
                          "number without quotes)"),
    ('{"allow_sockets": ["/x"]}', "unknown key 'allow_sockets' in config file {cfg}: did you "
                                  "mean allow_socket?"),
])
def test_bad_config_file_exit_2(tmp: Path, content: str, needle: str) -> None:
    """A malformed config file exits 2 with one line naming the fix and starts nothing."""
    cfg = tmp / "c.json"
    cfg.write_text(content)
    result = run_relay("server", "--config", str(cfg))
    assert result.returncode == 2
    assert needle.replace("{cfg}", str(cfg)) in fatal(result.stderr, 2)
    assert len(result.stderr.strip().splitlines()) == 1


def test_client_without_listen_off_windows_exit_2(keys: Keys, tmp: Path) -> None:
    """A bare `client` on Linux would listen on the Windows pipe: exit 2, one line, the fix."""
    result = run_relay("client", "--identity-path", str(keys.identity), "--known-hosts-path",
                       str(tmp / "kh"), "--log-level", "error")
    assert result.returncode == 2, result.stderr
    assert fatal(result.stderr, 2) == (
        "cannot listen on npipe:////./pipe/container-desktop: named pipes exist only on "
        "Windows; use --listen unix:///path/relay.sock here")
    assert len(result.stderr.strip().splitlines()) == 1


def test_listen_into_missing_directory_exit_2(keys: Keys, tmp: Path) -> None:
    """--listen into a directory that does not exist: exit 2, one line naming the directory."""
    missing = tmp / "nowhere"
    result = run_relay("client", "--listen", f"unix://{missing}/c.sock", "--ssh-connection",
                       "ssh://u@127.0.0.1:1", "--identity-path", str(keys.identity),
                       "--known-hosts-path", str(tmp / "kh"), "--log-level", "error")
    assert result.returncode == 2, result.stderr
    assert fatal(result.stderr, 2) == (
        f"cannot listen on {missing}/c.sock: directory {missing} does not exist; create it or "
        "choose a socket path in an existing directory")
    assert not missing.exists()


def test_missing_identity_exit_2(tmp: Path) -> None:
    """A missing key file is a clear one-line error, exit 2."""
    result = run_relay("server", "--identity-path", str(tmp / "none"), "--log-level", "error")
    assert result.returncode == 2
    assert "does not exist; create it with --generate-key-pair" in fatal(result.stderr, 2)


def test_open_key_refused_exit_2(keys: Keys) -> None:
    """A private key readable by others is refused at start."""
    keys.identity.chmod(0o644)
    result = run_relay("server", "--identity-path", str(keys.identity), "--log-level", "error")
    assert result.returncode == 2 and "chmod 600" in fatal(result.stderr, 2)


def test_help_documents_every_flag() -> None:
    """server --help and client --help list every key of their role with its env var, and
    none of the other role's; defaults are spelled as in the docs (10s, false)."""
    from container_desktop_relay.config import config_fields

    for role in ("server", "client"):
        result = run_relay(role, "--help")
        assert result.returncode == 0
        for f, opt in config_fields():
            flag = "--" + f.name.replace("_", "-") + " "
            assert (flag in result.stdout) == (role in opt.roles), (role, flag)
            assert ("CDR_" + f.name.upper() in result.stdout) == (role in opt.roles)
        shown = " ".join(result.stdout.split())
        assert "(default: 10s)" in shown and "(default: false)" in shown
        assert "10.0" not in shown and "False" not in shown
    top = run_relay("--help")
    assert top.returncode == 0 and "server" in top.stdout and "keygen" in top.stdout


def test_version_and_module_entry() -> None:
    """--version prints the single-sourced version and what the program carries."""
    import platform
    from importlib.metadata import version

    from container_desktop_relay import __version__

    result = run_relay("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == (
        f"container-desktop-relay {__version__} (Python {platform.python_version()}, "
        f"asyncssh {version('asyncssh')}, cryptography {version('cryptography')})")


def test_generate_key_pair_then_runs_on(tmp: Path) -> None:
    """The bare form with --generate-key-pair creates keys, then the role starts (server here).

    A busy port makes the started role fail fast, proving it ran on after generating.
    """
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_relay("--generate-key-pair", "--identity-path", str(tmp / "k" / "id_rsa"),
                           "--authorized-keys-path", str(tmp / "k" / "ak"), "--port", str(port),
                           "--log-level", "info", "--health-check-enabled=false")
    assert (tmp / "k" / "id_rsa").exists() and (tmp / "k" / "ak").read_text().startswith("ssh-rsa")
    assert result.returncode == 1
    # the port's holder (this test process) and the flag that moves the relay elsewhere
    assert fatal(result.stderr, 1).startswith(
        f"cannot listen on 127.0.0.1:{port}: address already in use (held by pid "
        f"{os.getpid()} (")
    assert fatal(result.stderr, 1).endswith(
        "; stop that process or choose another port with --port)")
    events = [json.loads(line)["event"] for line in result.stderr.splitlines()]
    assert "key_pair_generated" in events


def test_world_writable_authorized_keys_refused_at_start(keys: Keys) -> None:
    """An authorized_keys anyone can write stops the server at start, exit 2, one line."""
    keys.authorized_keys.chmod(0o666)
    result = run_relay("server", "--identity-path", str(keys.identity), "--authorized-keys-path",
                       str(keys.authorized_keys), "--log-level", "error")
    assert result.returncode == 2 and "chmod go-w" in fatal(result.stderr, 2)


def test_keygen_refuses_a_stale_public_key_and_completes_after_the_fix(tmp: Path) -> None:
    """keygen with an orphaned id_rsa.pub: one line naming the fix, exit 2, nothing written;
    after moving it aside, keygen completes (a Latin-1 comment in authorized_keys is fine)."""
    import asyncssh

    pub = tmp / "id_rsa.pub"
    pub.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_public_key())
    ak = tmp / "authorized_keys"
    ak.write_bytes(b"# Jos\xe9's laptop\n")
    argv = ("keygen", "--identity-path", str(tmp / "id_rsa"), "--authorized-keys-path", str(ak))
    result = run_relay(*argv)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"mv {pub} {pub}.old" in fatal(result.stderr, 2), result.stderr
    assert not (tmp / "id_rsa").exists() and ak.read_bytes() == b"# Jos\xe9's laptop\n"
    pub.rename(tmp / "id_rsa.pub.old")
    result = run_relay(*argv, "--log-level", "error")
    assert result.returncode == 0, result.stderr
    assert ak.read_bytes().startswith(b"# Jos\xe9's laptop\n") and ak.read_bytes().count(b"\n") == 2
    assert asyncssh.read_public_key(str(pub)).public_data == \
        asyncssh.read_private_key(str(tmp / "id_rsa")).public_data


@pytest.mark.parametrize(("remote", "words"), [
    ("/tmp/../tmp/x.sock", "socket path '/tmp/../tmp/x.sock' is not normalized (no '.', '..' "
                           "or '//' allowed): it must be normalized, like '/tmp/x.sock'"),
    ("/C:\\Users\\me\\docker.sock", "socket path '/C:\\Users\\me\\docker.sock' is a Windows "
                                    "path: it must be the Linux path on the server, like "
                                    "'/mnt/c/Users/me/docker.sock'"),
])
def test_remote_path_the_server_refuses_stops_the_client_at_start(remote: str, words: str,
                                                                  tmp: Path) -> None:
    """A remote socket path the server refuses by rule is a start-up error (exit 2, one line
    naming the path, what is wrong and what is allowed), not a retry loop: nothing needs to
    listen on the port for the client to say so."""
    url = f"ssh://root@127.0.0.1:20122{remote}"
    result = run_relay("client", "--ssh-connection", url, "--listen", f"unix://{tmp}/c.sock",
                       "--log-level", "error", timeout=30)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"invalid ssh_connection={url}: {words}" in fatal(
        result.stderr, 2), lines
    assert "Traceback" not in result.stderr and not (tmp / "c.sock").exists()


def test_two_ssh_ports_are_refused(tmp: Path) -> None:
    """--port and a different port in --ssh-connection: exit 2 with one line naming both,
    instead of one being silently ignored."""
    result = run_relay("client", "--port", "20122", "--ssh-connection",
                       "ssh://root@127.0.0.1:20022/tmp/x.sock", "--listen",
                       f"unix://{tmp}/c.sock", "--log-level", "error", timeout=30)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert ("invalid port=20122 from --port: ssh_connection=ssh://root@127.0.0.1:20022/tmp/x.sock"
            " names port 20022, and the client has one SSH port") in fatal(result.stderr, 2)


def test_url_without_port_connects_to_the_relay_port(request: pytest.FixtureRequest,
                                                      relay_server: RelayServer, keys: Keys,
                                                      echo: EchoTarget, tmp: Path) -> None:
    """ssh://user@host/path (no port) goes to --port, the relay's port, not to 22."""
    from clienthelp import owned

    tid, sock = tmp / "c.tid", tmp / "c.sock"
    proc = owned(request, Proc(relay_cmd(
        "client", "--listen", f"unix://{sock}", "--ssh-connection",
        f"ssh://tester@127.0.0.1{echo.path}", "--port", str(relay_server.port),
        "--identity-path", str(keys.identity), "--known-hosts-path", str(tmp / "known_hosts"),
        "--tid-path", str(tid), "--max-retries", "2", "--log-level", "info"),
        tmp / "client.log", env=relay_env()))
    with stopping(proc):
        wait_for(lambda: tid.exists() or not proc.alive(), 30, "client readiness")
        assert proc.alive(), proc.log()
        assert f'"remote": "ssh://tester@127.0.0.1:{relay_server.port}{echo.path}"' in proc.log()


def test_keygen_shows_the_openssh_line_and_print_public_prints_only_it(tmp: Path) -> None:
    """keygen's output ends with the key's OpenSSH line; --print-public (or -print-public)
    prints just that line, the one ssh-keygen -y derives from the private key; without a key
    it is one line, exit 2."""
    import subprocess

    from helpers import need_tool

    identity = tmp / "id_rsa"
    made = run_relay("keygen", "--identity-path", str(identity), "--authorized-keys-path",
                     str(tmp / "ak"), "--log-level", "error")
    assert made.returncode == 0, made.stderr
    line = made.stdout.splitlines()[-1]
    assert line.startswith("ssh-rsa AAAA") and line.endswith(" container-desktop-relay")
    assert "--print-public" in made.stdout
    for flag in ("--print-public", "-print-public"):
        printed = run_relay("keygen", flag, "--identity-path", str(identity))
        assert printed.returncode == 0 and printed.stdout == line + "\n", printed.stderr
    derived = subprocess.run([need_tool("ssh-keygen"), "-y", "-f", str(identity)],
                             check=True, capture_output=True, text=True).stdout
    assert derived.split()[:2] == line.split()[:2]
    missing = run_relay("keygen", "--print-public", "--identity-path", str(tmp / "none"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "does not exist" in missing.stderr and not (tmp / "none").exists()
