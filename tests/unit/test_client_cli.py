"""The client's command line: the desktop app's invocation, defaults, and one-line errors."""

from __future__ import annotations

import getpass

import pytest

from container_desktop_relay.cli import main
from container_desktop_relay.commands import registry
from container_desktop_relay.commands.registry import COMMANDS, parse_config
from container_desktop_relay.endpoints import parse_endpoint
from container_desktop_relay.ssh.client import resolve_target

APP_ARGV = [
    "--named-pipe", "npipe:////./pipe/container-desktop",
    "--ssh-connection", "ssh://user@localhost:41234/var/run/docker.sock",
    "--ssh-timeout", "15", "--identity-path", "C:\\Users\\user\\.ssh\\id_rsa",
    "--distribution", "Ubuntu", "--relay-program-path", "/opt/relay/relay-linux",
    "--watch-process-termination", "--generate-key-pair", "--host", "localhost",
    "--port", "41234",
]


@pytest.mark.parametrize("command", ["", "client"])
def test_desktop_app_invocation_parses(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Electron app's exact flags load into the client settings, bare form included (the
    bare form runs the client on Windows, where the app runs it)."""
    monkeypatch.setattr(registry, "platform_role", lambda: "client")
    config = parse_config(command, APP_ARGV, environ={})
    assert config.ssh_timeout == 15.0 and config.port == 41234 and config.host == "localhost"
    assert config.distribution == "Ubuntu" and config.relay_program_path == "/opt/relay/relay-linux"
    assert config.watch_process_termination and config.generate_key_pair
    target = resolve_target(config)
    assert (target.user, target.host, target.port, target.socket_path) == (
        "user", "localhost", 41234, "/var/run/docker.sock")
    endpoint = parse_endpoint(config.listen or config.named_pipe)
    assert endpoint.address == "\\\\.\\pipe\\container-desktop"


def test_go_style_single_dash_flags() -> None:
    """Go's -flag value spelling works for client flags too."""
    config = parse_config("client", ["-ssh-timeout", "2s", "-max-retries", "9",
                                     "-listen", "unix:///tmp/x.sock"], environ={})
    assert (config.ssh_timeout, config.max_retries, config.listen) == (2.0, 9,
                                                                        "unix:///tmp/x.sock")


def test_target_defaults_to_host_and_port() -> None:
    """Without --ssh-connection the client goes to --host/--port and /var/run/docker.sock."""
    config = parse_config("client", ["--host", "10.0.0.2", "--port", "2200"], environ={})
    target = resolve_target(config)
    assert (target.user, target.host, target.port, target.socket_path) == (
        getpass.getuser(), "10.0.0.2", 2200, "/var/run/docker.sock")


def test_client_command_registered() -> None:
    """`container-desktop-relay client` exists."""
    assert "client" in [command.name for command in COMMANDS]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["client", "--listen", "unix://relative.sock"], "must be absolute"),
        (["client", "--ssh-connection", "http://x"], "ssh://user@host:port"),
        (["client", "--max-retries", "0"], "max_retries"),
        (["client", "--ssh-timeout", "soon"], "ssh_timeout"),
        (["client", "--listen", "unix:///tmp/x.sock", "--distribution", "Ubuntu"],
         "needs both --distribution and --relay-program-path"),
    ],
)
def test_bad_client_settings_exit_2_with_one_line(argv: list[str], words: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Bad client input exits 2 with one line naming the problem, no traceback."""
    assert main([*argv, "--log-level", "error"]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err
