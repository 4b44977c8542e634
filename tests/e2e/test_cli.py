"""The command line as users meet it: exit codes, one-line errors, help, bare form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import Keys, run_relay

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["server", "--port", "0"], "invalid port=0"),
        (["server", "--bogus"], "unrecognized arguments: --bogus"),
        (["server", "--port"], "expected one argument"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["--buffer-size", "12"], "invalid buffer_size=12"),
        (["server", "--log-level", "verbose"], "invalid log_level=verbose"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    """Bad flags exit 2 with one line naming the problem and no traceback."""
    result = run_relay(*args)
    assert result.returncode == 2
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


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
    """--help lists every configuration key with its env var."""
    from container_desktop_relay.config import config_fields

    result = run_relay("server", "--help")
    assert result.returncode == 0
    for f, _ in config_fields():
        assert "--" + f.name.replace("_", "-") in result.stdout
        assert "CDR_" + f.name.upper() in result.stdout
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
