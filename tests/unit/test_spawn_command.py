"""Spawning the server: wslpath-style translation and the wsl.exe command line."""

from __future__ import annotations

import pytest

from container_desktop_relay.config import load_config
from container_desktop_relay.errors import ConfigError
from container_desktop_relay.runtime.spawn import server_command
from container_desktop_relay.runtime.wslpath import parse_automount_root, to_wsl_path


@pytest.mark.parametrize(
    ("windows", "distribution", "root", "linux"),
    [
        ("C:\\Users\\u\\id_rsa", "", "/mnt/", "/mnt/c/Users/u/id_rsa"),
        ("d:\\Data Files\\key", "", "/mnt/", "/mnt/d/Data Files/key"),
        ("C:/Users/u/.ssh/id_rsa", "", "/mnt/", "/mnt/c/Users/u/.ssh/id_rsa"),
        ("C:\\", "", "/mnt/", "/mnt/c"),
        # a custom automount root (/etc/wsl.conf [automount] root), with or without "/"
        ("C:\\Users\\u\\k", "", "/windir/", "/windir/c/Users/u/k"),
        ("C:\\Users\\u\\k", "", "/", "/c/Users/u/k"),
        ("E:\\k", "", "/drives", "/drives/e/k"),
        # device prefixes
        ("\\\\?\\C:\\Users\\u\\k", "", "/mnt/", "/mnt/c/Users/u/k"),
        ("\\\\.\\C:\\Users\\u\\k", "", "/mnt/", "/mnt/c/Users/u/k"),
        ("\\\\?\\UNC\\wsl$\\Ubuntu\\home\\u\\k", "Ubuntu", "/mnt/", "/home/u/k"),
        # the spawned distribution's own files (any case), and with no distribution known
        ("\\\\wsl$\\Ubuntu\\home\\u\\id_rsa", "Ubuntu", "/mnt/", "/home/u/id_rsa"),
        ("\\\\wsl.localhost\\debian\\root\\.ssh\\k", "Debian", "/mnt/", "/root/.ssh/k"),
        ("\\\\wsl.localhost\\Debian\\root\\.ssh\\k", "", "/mnt/", "/root/.ssh/k"),
        ("\\\\wsl$\\Ubuntu", "Ubuntu", "/mnt/", "/"),
        # already Linux
        ("/home/u/.ssh/id_rsa", "Ubuntu", "/windir/", "/home/u/.ssh/id_rsa"),
    ],
)
def test_to_wsl_path(windows: str, distribution: str, root: str, linux: str) -> None:
    """Windows paths map the way wslpath -u maps them inside the spawned distribution."""
    assert to_wsl_path(windows, distribution=distribution, root=root) == linux


@pytest.mark.parametrize(
    ("bad", "distribution"),
    [("id_rsa", ""), ("C:id_rsa", ""), ("\\\\server\\share\\k", ""),
     ("\\\\wsl.localhost\\Debian\\home\\u\\id", "Ubuntu"),
     ("\\\\wsl$\\Debian\\home\\u\\id", "Ubuntu"),
     ("\\\\?\\UNC\\server\\share\\k", "")],
)
def test_to_wsl_path_refuses_unmappable(bad: str, distribution: str) -> None:
    """Relative paths, foreign shares and other distributions' files cannot be translated."""
    with pytest.raises(ValueError):
        to_wsl_path(bad, distribution=distribution)


@pytest.mark.parametrize(
    ("conf", "root"),
    [("", "/mnt/"),
     ("[automount]\nroot = /windir/\n", "/windir/"),
     ("[automount]\nenabled=true\nroot=/drives # comment\n", "/drives/"),
     ("[automount]\nroot = relative\n", "/mnt/"),
     ("[network]\nhostname = x\n", "/mnt/"),
     ("not an ini file [", "/mnt/")],
)
def test_automount_root_from_wsl_conf(conf: str, root: str) -> None:
    """The [automount] root of /etc/wsl.conf, normalised; the default otherwise."""
    assert parse_automount_root(conf) == root


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


def test_server_command_uses_the_automount_root_and_refuses_other_distributions() -> None:
    """Key paths follow the distribution's automount root; another distribution's file is a
    configuration error naming the key."""
    config = load_config({"distribution": "Ubuntu", "relay_program_path": "/p",
                          "identity_path": "C:\\k\\id", "authorized_keys_path":
                          "\\\\wsl.localhost\\Ubuntu\\home\\u\\ak"}, environ={})
    argv = server_command(config, own_pid=1, root="/windir/")
    assert argv[argv.index("--identity-path") + 1] == "/windir/c/k/id"
    assert argv[argv.index("--authorized-keys-path") + 1] == "/home/u/ak"
    other = load_config({"distribution": "Ubuntu", "relay_program_path": "/p",
                         "identity_path": "\\\\wsl$\\Debian\\id"}, environ={})
    with pytest.raises(ConfigError, match=r"identity_path.*inside the distribution 'Debian'"):
        server_command(other, own_pid=1)
