"""--ssh-connection: one default port (--port), and remote paths the server refuses stop the
client at start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from container_desktop_relay.config import load_config
from container_desktop_relay.errors import ConfigError
from container_desktop_relay.runtime.spawn import server_command
from container_desktop_relay.ssh.client import resolve_target
from container_desktop_relay.ssh.url import explicit_port, parse_ssh_url


@pytest.mark.parametrize(("url", "default", "port"), [
    ("ssh://root@127.0.0.1/tmp/x.sock", 20022, 20022),
    ("ssh://root@127.0.0.1/tmp/x.sock", 20122, 20122),
    ("ssh://root@127.0.0.1:/tmp/x.sock", 20122, 20122),
    ("ssh://root@[::1]/tmp/x.sock", 2200, 2200),
    ("ssh://root@127.0.0.1:2222/tmp/x.sock", 20022, 2222),
])
def test_a_url_without_port_takes_the_default_given(url: str, default: int, port: int) -> None:
    """No port in the URL: the caller's default (the client's --port); never 22."""
    assert parse_ssh_url(url, default_port=default).port == port


@pytest.mark.parametrize(("url", "port"), [
    ("ssh://u@h/x.sock", None), ("ssh://u@h:/x.sock", None), ("ssh://u@h:2222/x.sock", 2222),
    ("ssh://u@h:99999/x.sock", None),
])
def test_explicit_port(url: str, port: int | None) -> None:
    """The port a URL names, None when it names none (or a bad one, reported elsewhere)."""
    assert explicit_port(url) == port


def test_client_target_and_ports_follow_the_relay_port() -> None:
    """Without a port in --ssh-connection the client connects to --port (default 20022), and
    its observability ports derive from that port."""
    url = "ssh://root@127.0.0.1/tmp/x.sock"
    assert resolve_target(load_config({"ssh_connection": url}, environ={})).port == 20022
    config = load_config({"ssh_connection": url, "port": "20122"}, environ={})
    assert resolve_target(config).port == 20122 and config.ssh_port("client") == 20122
    assert config.effective_health_port("client") == 20122 + 59


@pytest.mark.parametrize(("url", "words"), [
    ("ssh://root@127.0.0.1:20122/tmp/../tmp/x.sock",
     "socket path '/tmp/../tmp/x.sock' is not normalized (no '.', '..' or '//' allowed): it "
     "must be normalized, like '/tmp/x.sock'"),
    ("ssh://root@127.0.0.1:20122/C:\\Users\\me\\docker.sock",
     "socket path '/C:\\Users\\me\\docker.sock' is a Windows path: it must be the Linux path "
     "on the server, like '/mnt/c/Users/me/docker.sock'"),
    ("ssh://root@127.0.0.1:20122//var/run/docker.sock", "like '/var/run/docker.sock'"),
    ("ssh://root@127.0.0.1:20122/run/%2e%2e/x.sock", "socket path '/run/../x.sock' is not "
                                                      "normalized"),
    ("ssh://root@127.0.0.1:20122/run/docker.sock/", "like '/run/docker.sock'"),
])
def test_a_remote_path_the_server_refuses_is_a_config_error(url: str, words: str) -> None:
    """The server's rule applied at start: one line naming the URL, the path, what is wrong
    and what is allowed; exit status 2."""
    with pytest.raises(ConfigError) as info:
        load_config({"ssh_connection": url}, environ={})
    message = str(info.value)
    assert message.startswith(f"invalid ssh_connection={url}: ") and words in message
    assert "the server would refuse it" in message and "\n" not in message
    assert info.value.exit_code == 2


def test_the_allowlist_is_not_checked_at_the_client() -> None:
    """--allow-socket is the server's and unknown to the client: any path the rule allows
    loads (the server decides the rest)."""
    config = load_config({"ssh_connection": "ssh://u@h:2/srv/anything.sock"}, environ={})
    assert resolve_target(config).socket_path == "/srv/anything.sock"


@pytest.mark.parametrize(("values", "environ"), [
    ({"ssh_connection": "ssh://u@h:20122/x.sock", "port": "20022"}, {}),
    ({"ssh_connection": "ssh://u@h:20122/x.sock"}, {"CDR_PORT": "20222"}),
])
def test_two_different_ports_are_refused(values: dict[str, str], environ: dict[str, str]
                                         ) -> None:
    """The URL's port and an explicit --port (or CDR_PORT, or the file's port) that differ:
    one line naming both and the fix, exit 2, instead of one being silently ignored."""
    with pytest.raises(ConfigError) as info:
        load_config(values, environ=environ)
    message = str(info.value)
    assert message.startswith("invalid port=") and "names port 20122" in message
    assert "the client has one SSH port" in message and "\n" not in message
    assert info.value.exit_code == 2


def test_a_config_file_with_two_ports_is_refused_naming_it(tmp_path: Path) -> None:
    """The same check for a config file, whose name the message gives."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"port": 20022, "ssh_connection": "ssh://u@h:20122/x.sock"}))
    with pytest.raises(ConfigError, match=f"invalid port=20022 from config file {path}: "):
        load_config({}, config_path=str(path), environ={})


def test_the_same_port_twice_or_once_is_fine() -> None:
    """Both naming the same port, or either alone, loads."""
    url = "ssh://u@h:20122/x.sock"
    assert load_config({"ssh_connection": url, "port": "20122"}, environ={}).port == 20122
    assert load_config({"ssh_connection": url}, environ={}).ssh_port("client") == 20122


def test_a_spawned_server_listens_on_the_port_the_client_connects_to() -> None:
    """With --distribution/--relay-program-path the URL's port (else --port) is the spawned
    server's --port: the two cannot disagree."""
    spawn = {"distribution": "Ubuntu", "relay_program_path": "/opt/relay"}
    for values, port in [({"ssh_connection": "ssh://u@localhost:20122/x.sock"}, "20122"),
                         ({"ssh_connection": "ssh://u@localhost/x.sock", "port": "20222"},
                          "20222"),
                         ({}, "20022")]:
        config = load_config({**spawn, **values}, environ={})
        argv = server_command(config, own_pid=1, translate=False)
        assert argv[argv.index("--port") + 1] == port
        assert resolve_target(config).port == int(port)
