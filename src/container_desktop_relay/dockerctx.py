"""``docker-context``: a Docker CLI context pointing at the client's local endpoint."""

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

__all__ = ["build_parser", "docker_host", "main"]

# The Docker CLI's own rule for context names.
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.+-]+$")


def docker_host(config: Config) -> str:
    """The DOCKER_HOST form of the client's endpoint: ``unix:///path`` or ``npipe:////./pipe/N``.

    Raises:
        ConfigError: the endpoint URL is malformed.
    """
    from container_desktop_relay.endpoints import parse_endpoint

    endpoint = parse_endpoint(config.listen or config.named_pipe)
    if endpoint.scheme == "unix":
        return "unix://" + endpoint.address
    return "npipe://" + endpoint.address.replace("\\", "/")


def build_parser() -> argparse.ArgumentParser:
    """``docker-context``'s flags: the context name, --create, and every client setting."""
    from container_desktop_relay.cli import PROG, _new_parser, add_config_flags

    parser = _new_parser(
        f"{PROG} docker-context",
        "Print (or, with --create, run) the docker command that makes a context for the "
        "client's endpoint; then 'docker context use NAME'.",
    )
    parser.add_argument("name", metavar="NAME", help="the Docker context name")
    parser.add_argument("--create", action="store_true",
                        help="run docker context create (or update, when NAME exists)")
    add_config_flags(parser, ("client",))
    return parser


def _join(argv: list[str]) -> str:
    return subprocess.list2cmdline(argv) if sys.platform == "win32" else shlex.join(argv)


def main(argv: Sequence[str]) -> int:
    """Print the command, or create/update the context with the docker CLI.

    Raises:
        ConfigError: a bad context name or setting (exit 2).
        RelayError: the docker CLI is missing or refused (exit 1).
    """
    args = vars(build_parser().parse_args(list(argv)))
    name, create = args.pop("name"), args.pop("create")
    if not _NAME.match(name):
        raise ConfigError(f"invalid context name {name!r}: must match {_NAME.pattern}")
    config = load_config(args, config_path=args.pop("config_file", None))
    host = docker_host(config)
    description = "container-desktop-relay client endpoint"
    command = ["docker", "context", "create", name, "--description", description,
               "--docker", f"host={host}"]
    if not create:
        print(_join(command))
        print(_join(["docker", "context", "use", name]))
        return 0
    docker = shutil.which("docker")
    if docker is None:
        raise RelayError("the docker CLI is not on PATH; install it or run the printed "
                         "command elsewhere (drop --create)")
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
    return 0
