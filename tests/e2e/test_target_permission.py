"""A target socket the server may not open: the channel open fails with that reason, carried
to the SSH client, and the server goes on serving (README: a target that denies permission)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

from helpers import (
    EchoTarget,
    Keys,
    Proc,
    exchange,
    free_port,
    need_tool,
    relay_cmd,
    relay_env,
    sha,
    ssh_forward,
    stopping,
    unix_connect,
    wait_for,
)

pytestmark = pytest.mark.e2e


def test_target_that_denies_permission_fails_the_channel_with_the_reason(
        keys: Keys, echo: EchoTarget, tmp: Path) -> None:
    """With a mode-0000 target socket the channel open is refused with 'permission denied
    connecting to target socket PATH', which ssh reports; once the mode allows it, the same
    forward carries data byte-exact.

    The tests run as root, whom file modes do not stop, so the server runs without
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (setpriv): modes then bind it as any user.
    """
    setpriv = need_tool("setpriv")
    port = free_port()
    server = Proc([setpriv, "--bounding-set=-dac_override,-dac_read_search",
                   *relay_cmd("server", "--host", "127.0.0.1", "--port", str(port),
                              "--identity-path", str(keys.identity),
                              "--authorized-keys-path", str(keys.authorized_keys),
                              "--health-check-enabled=false", "--metrics-enabled=false",
                              "--log-level", "debug")],
                  tmp / "server.log", env=relay_env())
    with stopping(server):
        wait_for(lambda: '"server_listening"' in server.log() or not server.alive(), 20,
                 "the server to listen")
        assert server.alive(), server.log()
        os.chmod(echo.path, 0)
        fwd = ssh_forward(port, keys.identity, tmp / "l.sock", str(echo.path), tmp)
        with stopping(fwd):
            with unix_connect(tmp / "l.sock", 30) as s:
                s.sendall(b"hello")
                with contextlib.suppress(ConnectionResetError):  # EOF or reset: no answer
                    assert s.recv(1) == b""
            reason = f"permission denied connecting to target socket {echo.path}"
            failed = wait_for(lambda: [r for r in map(json.loads, (
                line for line in server.log().splitlines() if line.startswith("{")))
                if r.get("event") == "channel_open_failed"], 10, "channel_open_failed")
            assert [r["reason"] for r in failed] == [reason]
            wait_for(lambda: reason in fwd.log(), 10, "ssh to report the refusal's reason")
            os.chmod(echo.path, 0o600)  # the owner's bits now let the server in
            payload = os.urandom(100_000)
            assert exchange(tmp / "l.sock", payload) == (len(payload), sha(payload))
        assert server.alive() and "Traceback" not in server.log()

