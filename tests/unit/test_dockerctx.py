"""docker-context: the client's endpoint in the Docker CLI's DOCKER_HOST spelling."""

from __future__ import annotations

import pytest

from container_desktop_relay.commands.dockerctx import docker_host
from container_desktop_relay.config import load_config


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
