"""Spawning the server: wslpath-style translation and the wsl.exe command line."""

from __future__ import annotations

import pytest

from container_desktop_relay.config import load_config
from container_desktop_relay.errors import ConfigError
from container_desktop_relay.spawn import server_command, to_wsl_path


@pytest.mark.parametrize(
    ("windows", "linux"),
    [
        ("C:\\Users\\u\\id_rsa", "/mnt/c/Users/u/id_rsa"),
        ("d:\\Data Files\\key", "/mnt/d/Data Files/key"),
        ("C:/Users/u/.ssh/id_rsa", "/mnt/c/Users/u/.ssh/id_rsa"),
        ("C:\\", "/mnt/c"),
        ("\\\\wsl$\\Ubuntu\\home\\u\\id_rsa", "/home/u/id_rsa"),
        ("\\\\wsl.localhost\\Debian\\root\\.ssh\\k", "/root/.ssh/k"),
        ("/home/u/.ssh/id_rsa", "/home/u/.ssh/id_rsa"),
    ],
)
def test_to_wsl_path(windows: str, linux: str) -> None:
    """Windows paths map the way wslpath -u maps them."""
    assert to_wsl_path(windows) == linux


@pytest.mark.parametrize("bad", ["id_rsa", "C:id_rsa", "\\\\server\\share\\k"])
def test_to_wsl_path_refuses_unmappable(bad: str) -> None:
    """Relative paths and foreign shares cannot be translated."""
    with pytest.raises(ValueError):
        to_wsl_path(bad)


def test_server_command_carries_every_setting() -> None:
    """The command runs P's server role with the client's settings and its own PID."""
    config = load_config(
        {"distribution": "Ubuntu-24.04", "relay_program_path": "/opt/relay/relay-linux",
         "identity_path": "C:\\Users\\u\\.ssh\\id_rsa",
         "authorized_keys_path": "C:\\Users\\u\\.ssh\\authorized_keys",
         "host": "localhost", "port": "41234", "buffer_size": "16384",
         "poll_interval": "1.5s", "log_level": "info"},
        environ={},
    )
    argv = server_command(config, own_pid=4321, wsl="C:\\Windows\\System32\\wsl.exe")
    assert argv == [
        "C:\\Windows\\System32\\wsl.exe", "--distribution", "Ubuntu-24.04",
        "--exec", "/opt/relay/relay-linux", "server",
        "--host", "localhost", "--port", "41234", "--buffer-size", "16384",
        "--poll-interval", "1.5s",
        "--identity-path", "/mnt/c/Users/u/.ssh/id_rsa",
        "--authorized-keys-path", "/mnt/c/Users/u/.ssh/authorized_keys",
        "--log-level", "info",
        "--parent-process-pid", "4321", "--watch-process-termination",
    ]


def test_server_command_untranslatable_path_is_config_error() -> None:
    """A key path WSL cannot see is reported as a configuration error."""
    config = load_config({"distribution": "D", "relay_program_path": "/p",
                          "identity_path": "\\\\server\\share\\id_rsa"}, environ={})
    with pytest.raises(ConfigError, match="identity_path"):
        server_command(config, own_pid=1)
