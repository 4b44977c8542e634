"""docker-context: the client's endpoint in the Docker CLI's DOCKER_HOST spelling."""

from __future__ import annotations

import sys

import pytest

from container_desktop_relay.commands.dockerctx import docker_host, main
from container_desktop_relay.commands.registry import find
from container_desktop_relay.config import load_config
from container_desktop_relay.errors import ConfigError


@pytest.mark.parametrize(("flags", "host"), [
    ({"listen": "unix:///run/user/1000/relay.sock"}, "unix:///run/user/1000/relay.sock"),
    ({}, "npipe:////./pipe/container-desktop"),
    ({"named_pipe": "npipe:////./pipe/cdr"}, "npipe:////./pipe/cdr"),
    ({"named_pipe": "npipe://\\\\.\\pipe\\cdr"}, "npipe:////./pipe/cdr"),
    ({"listen": "unix:///tmp/a", "named_pipe": "npipe:////./pipe/x"}, "unix:///tmp/a"),
])
def test_docker_host(flags: dict[str, str], host: str) -> None:
    """--listen wins over --named-pipe; pipes use forward slashes as Docker expects."""
    assert docker_host(load_config(flags, environ={})) == host


@pytest.mark.parametrize("flags", [[], ["--named-pipe", "npipe:////./pipe/cdr"],
                                   ["--forward", "npipe:////./pipe/a=/run/a.sock"]])
def test_named_pipe_refused_off_windows(monkeypatch: pytest.MonkeyPatch,
                                        flags: list[str]) -> None:
    """Off Windows a pipe context is refused as the client refuses the pipe: exit 2, the fix."""
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(ConfigError, match=r"named pipes exist only on Windows; use --listen "
                                          r"unix:///path/relay\.sock here") as err:
        main(find("docker-context").parser().parse_args(["ctx", *flags]))
    assert err.value.exit_code == 2
