"""The asyncssh options of every SSH connection the relay makes or accepts, built in one place.

The server's listener, the client's link and ``doctor`` take their algorithms, keepalive,
re-keying and authentication options from here, so ``doctor`` tests what the client does.
Host-key *checking* stays with the caller (the client's :class:`HostKeyPolicy` with trust on
first use, doctor's read-only pinning); its inputs are parameters here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncssh

from container_desktop_relay.config import Config
from container_desktop_relay.ssh import tune as sshtune
from container_desktop_relay.ssh.url import SSHTarget

__all__ = ["algorithm_options", "connect_options", "host_key_options", "listen_options"]


def algorithm_options() -> dict[str, Any]:
    """Ciphers (the fast AEAD ones first) and no compression: what both roles negotiate."""
    return {"encryption_algs": sshtune.preferred_ciphers(), "compression_algs": ["none"]}


def _transport(config: Config) -> dict[str, Any]:
    """Keepalive and re-keying, the same on both roles."""
    return {
        "keepalive_interval": config.keepalive_interval,
        "keepalive_count_max": config.keepalive_count_max,
        "rekey_bytes": config.rekey_limit,
    }


def listen_options(config: Config, host_key: asyncssh.SSHKey,
                   server_factory: Callable[[], asyncssh.SSHServer]) -> dict[str, Any]:
    """``asyncssh.listen`` keywords of the server role: its host key, public keys only (the
    factory decides), no shells, PTYs, agent or X11 forwarding, no SCP."""
    return {
        "server_factory": server_factory,
        "server_host_keys": [host_key],
        **algorithm_options(),
        "login_timeout": config.connect_timeout,
        **_transport(config),
        "x11_forwarding": False,
        "agent_forwarding": False,
        "allow_pty": False,
        "allow_scp": False,
        "reuse_address": True,
    }


def connect_options(config: Config, target: SSHTarget, identity: asyncssh.SSHKey, *,
                    known_hosts: tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey],
                                       list[asyncssh.SSHKey]],
                    server_host_key_algs: list[str],
                    client_factory: Callable[[], asyncssh.SSHClient] | None = None,
                    ) -> dict[str, Any]:
    """``asyncssh.connect`` keywords of the client's link (and of doctor's login): the
    identity key only (no agent, no ~/.ssh/config, no X.509), the trusted host keys as
    ``known_hosts`` (trusted, certificate authorities, revoked), the algorithms, keepalive
    and re-keying of the server role."""
    options: dict[str, Any] = {
        "username": target.user,
        "client_keys": [identity],
        "known_hosts": known_hosts,
        "server_host_key_algs": server_host_key_algs,
        "agent_path": None,
        "config": None,
        "preferred_auth": "publickey",
        "x509_trusted_certs": None,
        **algorithm_options(),
        **_transport(config),
    }
    if client_factory is not None:
        options["client_factory"] = client_factory
    return options


def host_key_options(server_host_key_algs: list[str]) -> dict[str, Any]:
    """``asyncssh.get_server_host_key`` keywords: the host-key algorithms the client offers, no
    ~/.ssh/config (it takes no cipher list: it stops after the key exchange)."""
    return {"server_host_key_algs": server_host_key_algs, "config": None}
