"""The asyncssh options built once for the server, the client's link and doctor."""

from __future__ import annotations

import asyncssh

from container_desktop_relay.config import load_config
from container_desktop_relay.ssh.options import (
    algorithm_options,
    connect_options,
    host_key_options,
    listen_options,
)
from container_desktop_relay.ssh.url import SSHTarget


def test_both_roles_and_doctor_negotiate_the_same_algorithms() -> None:
    """Listener and link (and so doctor's login) offer the same ciphers, no compression, and
    share keepalive and re-keying from the configuration; doctor's host-key probe reads no
    ~/.ssh/config."""
    config = load_config({"keepalive_interval": "7s", "keepalive_count_max": "4",
                          "rekey_limit": "1048576"}, environ={})
    key = asyncssh.generate_private_key("ssh-ed25519")
    target = SSHTarget("me", "127.0.0.1", 20022, "/run/x.sock")
    listen = listen_options(config, key, asyncssh.SSHServer)
    connect = connect_options(config, target, key, known_hosts=([key], [], []),
                              server_host_key_algs=["ssh-ed25519"])
    probe = host_key_options(["ssh-ed25519"])
    algs = algorithm_options()
    assert algs["compression_algs"] == ["none"] and algs["encryption_algs"]
    for options in (listen, connect):
        assert {k: options[k] for k in algs} == algs
    for key_name, value in (("keepalive_interval", 7.0), ("keepalive_count_max", 4),
                            ("rekey_bytes", 1048576)):
        assert listen[key_name] == connect[key_name] == value
    assert connect["username"] == "me" and connect["client_keys"] == [key]
    assert connect["agent_path"] is None and connect["config"] is None
    assert connect["preferred_auth"] == "publickey"
    assert "client_factory" not in connect
    assert listen["allow_pty"] is False and listen["server_host_keys"] == [key]
    assert probe["config"] is None and probe["server_host_key_algs"] == ["ssh-ed25519"]
