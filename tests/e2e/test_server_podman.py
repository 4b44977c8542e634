"""A real engine (Podman's Docker API) driven by the docker CLI through ssh -L and the server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import Keys, Podman, RelayServer, sha, ssh_forward, stopping

pytestmark = pytest.mark.e2e


def test_docker_cli_through_server(podman: Podman, relay_server: RelayServer, keys: Keys,
                                   tmp: Path) -> None:
    """docker version works, and 20 MB of random stdin through `docker run -i ... cat` comes
    back byte for byte (sha256), both directions and the stdin half-close."""
    local = tmp / "docker.sock"
    fwd = ssh_forward(relay_server.port, keys.identity, local, str(podman.socket), tmp)
    with stopping(fwd):
        version = podman.docker_cli(local, "version")
        assert version.returncode == 0, version.stderr
        assert b"Podman Engine" in version.stdout or b"Server:" in version.stdout
        payload = os.urandom(20_000_000)
        run = podman.docker_cli(local, "run", "--rm", "-i", "--network", "none", podman.IMAGE,
                                "cat", input=payload)
        assert run.returncode == 0, run.stderr
        assert (len(run.stdout), sha(run.stdout)) == (len(payload), sha(payload))
