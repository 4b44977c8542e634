"""``docker-context``: a Docker CLI context for each of the client's local endpoints."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence

from container_desktop_relay.config import Config, load_config
from container_desktop_relay.errors import ConfigError, RelayError

__all__ = ["context_names", "docker_host", "docker_hosts", "main"]

# The Docker CLI's own rule for context names.
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.+-]+$")


def docker_host(config: Config) -> str:
    """The DOCKER_HOST form of the client's (first) endpoint: ``unix:///path`` or
    ``npipe:////./pipe/N``.

    Raises:
        ConfigError: the endpoint URL or a forward is malformed.
    """
    return docker_hosts(config)[0]


def docker_hosts(config: Config) -> list[str]:
    """The DOCKER_HOST form of every local endpoint of the client, one per forward.

    Raises:
        ConfigError: the endpoint URL or a forward is malformed.
    """
    from container_desktop_relay.ssh.forwards import client_forwards

    hosts = []
    for fwd in client_forwards(config):
        endpoint = fwd.endpoint
        if endpoint.scheme == "unix":
            hosts.append("unix://" + endpoint.address)
        else:
            hosts.append("npipe://" + endpoint.address.replace("\\", "/"))
    return hosts


def context_names(names: Sequence[str], count: int) -> list[str]:
    """One context name per forward: the names as given, or ``NAME-1``.. from one name.

    Raises:
        ConfigError: a name the Docker CLI refuses, or a count that matches neither.
    """
    if len(names) == 1 and count > 1:
        names = [f"{names[0]}-{i}" for i in range(1, count + 1)]
    if len(names) != count:
        raise ConfigError(f"invalid context names {' '.join(names)}: give one name per forward "
                          f"({count}), or one name to number them")
    for name in names:
        if not _NAME.match(name):
            raise ConfigError(f"invalid context name {name!r}: must match {_NAME.pattern}")
    return list(names)


def _join(argv: list[str]) -> str:
    return subprocess.list2cmdline(argv) if sys.platform == "win32" else shlex.join(argv)


def main(namespace: argparse.Namespace) -> int:
    """Print the command, or create/update the context with the docker CLI (flags: see
    commands.registry).

    Raises:
        ConfigError: a bad context name or setting, a named pipe off Windows (exit 2).
        RelayError: the docker CLI is missing or refused (exit 1).
    """
    from container_desktop_relay.endpoints import require_available
    from container_desktop_relay.ssh.forwards import client_forwards

    args = dict(vars(namespace))
    names, create = args.pop("names"), args.pop("create")
    for name in names:
        if not _NAME.match(name):
            raise ConfigError(f"invalid context name {name!r}: must match {_NAME.pattern}")
    config = load_config(args, config_path=args.pop("config_file", None))
    for fwd in client_forwards(config):  # as the client refuses them: a pipe off Windows
        require_available(fwd.endpoint)
    hosts = docker_hosts(config)
    names = context_names(names, len(hosts))
    if not create:
        for name, host in zip(names, hosts, strict=True):
            print(_join(_create_command(name, host)))
        print(_join(["docker", "context", "use", names[0]]))
        return 0
    docker = shutil.which("docker")
    if docker is None:
        raise RelayError("the docker CLI is not on PATH; install it or run the printed "
                         "command elsewhere (drop --create)")
    for name, host in zip(names, hosts, strict=True):
        _create(docker, name, host)
    return 0


def _create_command(name: str, host: str) -> list[str]:
    description = "container-desktop-relay client endpoint"
    return ["docker", "context", "create", name, "--description", description,
            "--docker", f"host={host}"]


def _create(docker: str, name: str, host: str) -> None:
    """Create (or update) context ``name`` for ``host`` with the docker CLI.

    Raises:
        RelayError: the docker CLI refused.
    """
    command = _create_command(name, host)
    exists = subprocess.run([docker, "context", "inspect", name], capture_output=True,
                            stdin=subprocess.DEVNULL).returncode == 0
    if exists:
        command[2] = "update"
    result = subprocess.run([docker, *command[1:]], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        reason = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise RelayError(f"docker context {command[2]} {name} failed: "
                         f"{reason[-1] if reason else f'exit {result.returncode}'}")
    print(f"{'updated' if exists else 'created'} docker context {name} ({host}); "
          f"use it: docker context use {name}")
