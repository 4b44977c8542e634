"""Forward parsing: LOCAL=REMOTE from flags, CDR_FORWARD and config files; the single form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from container_desktop_relay.config import load_config
from container_desktop_relay.errors import ConfigError
from container_desktop_relay.ssh.forwards import client_forwards, parse_forward


def test_single_form_is_one_forward() -> None:
    """Without --forward: --listen (or --named-pipe) to the --ssh-connection path, unchanged."""
    config = load_config({"listen": "unix:///tmp/r.sock",
                          "ssh_connection": "ssh://u@h:2222/run/podman/podman.sock"}, environ={})
    [fwd] = client_forwards(config)
    assert (fwd.endpoint.address, fwd.remote) == ("/tmp/r.sock", "/run/podman/podman.sock")
    [pipe] = client_forwards(load_config({}, environ={}))
    assert (pipe.endpoint.url, pipe.remote) == ("npipe:////./pipe/container-desktop",
                                                "/var/run/docker.sock")


def test_env_and_config_file_lists(tmp_path: Path) -> None:
    """CDR_FORWARD is comma-separated; the config key is a JSON array; both keep order."""
    env = {"CDR_FORWARD": "unix:///tmp/a.sock=/e1.sock, npipe:////./pipe/podman=/run/p.sock"}
    forwards = client_forwards(load_config({}, environ=env))
    assert [(f.endpoint.address, f.remote) for f in forwards] == [
        ("/tmp/a.sock", "/e1.sock"), ("\\\\.\\pipe\\podman", "/run/p.sock")]
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"forward": ["unix:///tmp/b.sock=/e2.sock"]}))
    [fwd] = client_forwards(load_config({}, config_path=str(path), environ={}))
    assert fwd.name == "unix:///tmp/b.sock" and str(fwd) == "unix:///tmp/b.sock=/e2.sock"


def test_equals_in_the_local_path_is_kept() -> None:
    """The separator is the first '=' before a '/': a local path may hold '=' itself."""
    fwd = parse_forward("unix:///tmp/a=b.sock=/e.sock")
    assert (fwd.endpoint.address, fwd.remote) == ("/tmp/a=b.sock", "/e.sock")


@pytest.mark.parametrize(("values", "message"), [
    ({"forward": ["unix:///a.sock=/x"], "listen": "unix:///b.sock"},
     "invalid listen with forward from --forward: --listen and --forward cannot be combined"),
    ({"forward": ["unix:///a.sock=/x"], "ssh_connection": "ssh://u@h:22/var/run/d.sock"},
     "invalid ssh_connection=ssh://u@h:22/var/run/d.sock with forward from --forward"),
    ({"forward": ["npipe:////./pipe/A=/x", "npipe:////./pipe/a=/y"]},
     "its local endpoint is already used by forward=npipe:////./pipe/A=/x"),
    ({"forward": ["unix:///a.sock=//x"]}, "must be normalized, like '/x'"),
])
def test_conflicts_are_config_errors(values: dict[str, object], message: str) -> None:
    """Mixing forms, a path in --ssh-connection, a duplicate pipe (any case), '//': one line."""
    with pytest.raises(ConfigError) as info:
        load_config(values, environ={})  # type: ignore[arg-type]
    assert message in str(info.value) and "\n" not in str(info.value)


def test_env_source_is_named() -> None:
    """A bad CDR_FORWARD names the variable."""
    with pytest.raises(ConfigError, match="from CDR_FORWARD"):
        load_config({}, environ={"CDR_FORWARD": "unix:///a.sock=rel"})
