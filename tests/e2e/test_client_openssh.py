"""The client role against a real OpenSSH sshd: interop, byte-exact bulk, half-close, pinning."""

from __future__ import annotations

import getpass
import os
from pathlib import Path

import asyncssh
import pytest

from clienthelp import ClientProc, owned
from helpers import (
    EchoTarget,
    Keys,
    SendFirstTarget,
    Sshd,
    exchange,
    sha,
    stopping,
    wait_for,
)

pytestmark = pytest.mark.e2e

MiB = 1 << 20


def test_64mib_each_way_through_sshd(
    request: pytest.FixtureRequest, sshd: Sshd, keys: Keys, echo: EchoTarget, tmp: Path
) -> None:
    """64 MiB of random data goes up and comes back sha256-identical through sshd."""
    client = owned(
        request, ClientProc(keys, tmp, sshd.port, str(echo.path), user=getpass.getuser())
    )
    with stopping(client):
        payload = os.urandom(64 * MiB)
        assert exchange(client.socket, payload, timeout=120) == (len(payload), sha(payload))
        wait_for(lambda: f'"bytes_up": {64 * MiB}' in client.log(), 10, "close log")
        assert f'"bytes_down": {64 * MiB}' in client.log()


def test_half_close_both_ways_through_sshd(
    request: pytest.FixtureRequest, sshd: Sshd, keys: Keys, tmp: Path
) -> None:
    """Target EOF reaches the local client while it keeps sending; its EOF reaches the target."""
    down = os.urandom(3 * MiB)
    up = os.urandom(5 * MiB)
    target = SendFirstTarget(tmp / "first.sock", down)
    client = owned(
        request, ClientProc(keys, tmp, sshd.port, str(target.path), user=getpass.getuser())
    )
    with stopping(client, target):
        target.check_half_close_both_ways(client.socket, up)


def test_sshd_host_key_recorded_on_first_use(
    request: pytest.FixtureRequest, sshd: Sshd, keys: Keys, echo: EchoTarget, tmp: Path
) -> None:
    """Trust on first use writes sshd's own host key, in OpenSSH's known_hosts format."""
    client = owned(
        request, ClientProc(keys, tmp, sshd.port, str(echo.path), user=getpass.getuser())
    )
    with stopping(client):
        host_key = asyncssh.read_public_key(str(sshd.host_key) + ".pub")
        recorded = client.known_hosts.read_text().split()
        assert recorded[0] == f"[127.0.0.1]:{sshd.port}"
        assert (
            asyncssh.import_public_key(" ".join(recorded[1:3])).public_data == host_key.public_data
        )
    # The stock ssh client accepts the file the relay wrote.
    result = __import__("subprocess").run(
        ["ssh-keygen", "-F", f"[127.0.0.1]:{sshd.port}", "-f", str(client.known_hosts)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0 and "found: line 1" in result.stdout
