"""``server``, ``client`` and ``keygen``: the parsed flags as one Config, then the role or keys."""

from __future__ import annotations

import argparse

from container_desktop_relay.commands.args import config_from
from container_desktop_relay.config import Config
from container_desktop_relay.log import setup_logging

__all__ = ["run_client", "run_keygen", "run_server"]


def run_server(args: argparse.Namespace) -> int:
    """``server`` (and the bare form on Linux): run the server role until told to stop."""
    return _run_role("server", args)


def run_client(args: argparse.Namespace) -> int:
    """``client`` (and the bare form on Windows): run the client role until told to stop."""
    return _run_role("client", args)


def run_keygen(args: argparse.Namespace) -> int:
    """``keygen``: create the key pair if missing and authorize its public half; with
    ``--print-public``, print the identity's OpenSSH line and create nothing."""
    flags = vars(args).copy()
    print_public = flags.pop("print_public", False)
    config = config_from(argparse.Namespace(**flags))
    setup_logging(config.log_level)
    from container_desktop_relay.ssh.keys import (
        authorized_key_line,
        ensure_key_pair,
        identity_public_key,
    )

    if print_public:
        line = authorized_key_line(identity_public_key(config.path("identity_path")))
        print(line.decode("ascii"), end="")
        return 0
    result = ensure_key_pair(config.path("identity_path"), config.path("authorized_keys_path"))
    verb = "created" if result.created else "kept existing"
    print(f"{verb} private key {result.private_path} (public key {result.public_path}); "
          f"{'added to' if result.authorized_added else 'already in'} "
          f"{config.path('authorized_keys_path')}")
    line = authorized_key_line(identity_public_key(result.private_path))
    print(f"its OpenSSH line, for the authorized_keys of a server on another machine "
          f"({result.public_path.name} is PEM, which sshd and the server do not read there; "
          f"keygen --print-public prints the line again):\n{line.decode('ascii')}", end="")
    return 0


def _run_role(role: str, args: argparse.Namespace) -> int:
    config: Config = config_from(args)
    setup_logging(config.log_level)
    if config.generate_key_pair:
        from container_desktop_relay.ssh.keys import ensure_key_pair

        ensure_key_pair(config.path("identity_path"), config.path("authorized_keys_path"))
    from container_desktop_relay.runtime import roles

    return roles.run_server(config) if role == "server" else roles.run_client(config)
