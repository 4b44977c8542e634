"""The command line as users meet it: exit codes, one-line errors, help, bare form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from container_desktop_relay.commands.registry import COMMANDS
from helpers import Keys, run_relay

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
    """Bad flags exit 2 with one line naming the problem and no traceback."""
    result = run_relay(*args)
    assert result.returncode == 2
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.count("container-desktop-relay") <= 2  # the prefix, a --help hint
    assert "Traceback" not in result.stderr


def test_unknown_command_names_the_program_once() -> None:
    """An unknown command is one line with the program's name once and the closest command."""
    result = run_relay("sever", "--port", "20022")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("container-desktop-relay: error: unknown command 'sever'; did you "
                             "mean 'server'? (--help lists them)\n")


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


def test_bad_config_file_exit_2(tmp: Path) -> None:
    """A malformed config file exits 2 with one line and starts nothing."""
    cfg = tmp / "c.json"
    cfg.write_text('{"port": 20022, "buffer_size": 8192,}')
    result = run_relay("server", "--config", str(cfg))
    assert result.returncode == 2 and "is not valid JSON" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_identity_exit_2(tmp: Path) -> None:
    """A missing key file is a clear one-line error, exit 2."""
    result = run_relay("server", "--identity-path", str(tmp / "none"), "--log-level", "error")
    assert result.returncode == 2
    assert "does not exist; create it with --generate-key-pair" in result.stderr


def test_open_key_refused_exit_2(keys: Keys) -> None:
    """A private key readable by others is refused at start."""
    keys.identity.chmod(0o644)
    result = run_relay("server", "--identity-path", str(keys.identity), "--log-level", "error")
    assert result.returncode == 2 and "chmod 600" in result.stderr


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
    assert result.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in result.stderr
    events = [json.loads(line)["event"] for line in result.stderr.splitlines()
              if line.startswith("{")]
    assert "key_pair_generated" in events


def test_world_writable_authorized_keys_refused_at_start(keys: Keys) -> None:
    """An authorized_keys anyone can write stops the server at start, exit 2, one line."""
    keys.authorized_keys.chmod(0o666)
    result = run_relay("server", "--identity-path", str(keys.identity), "--authorized-keys-path",
                       str(keys.authorized_keys), "--log-level", "error")
    assert result.returncode == 2 and "chmod go-w" in result.stderr


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
    assert len(lines) == 1 and f"mv {pub} {pub}.old" in lines[0], result.stderr
    assert not (tmp / "id_rsa").exists() and ak.read_bytes() == b"# Jos\xe9's laptop\n"
    pub.rename(tmp / "id_rsa.pub.old")
    result = run_relay(*argv, "--log-level", "error")
    assert result.returncode == 0, result.stderr
    assert ak.read_bytes().startswith(b"# Jos\xe9's laptop\n") and ak.read_bytes().count(b"\n") == 2
    assert asyncssh.read_public_key(str(pub)).public_data == \
        asyncssh.read_private_key(str(tmp / "id_rsa")).public_data
