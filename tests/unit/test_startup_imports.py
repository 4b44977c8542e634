"""The server role imports only what it uses: start-up time is mostly imports."""

from __future__ import annotations

import json
import subprocess
import sys

# What `container-desktop-relay server` (default settings: /health and /metrics on) imports.
SERVER_IMPORTS = """
import json, sys
from container_desktop_relay import cli
from container_desktop_relay.runtime import roles
from container_desktop_relay.observability import observe
from container_desktop_relay.runtime import memory
print(json.dumps(sorted(sys.modules)))
"""
#: Modules the server never uses; importing any of them costs every start.
NOT_FOR_THE_SERVER = ("aiohttp", "container_desktop_relay.ssh.client",
                      "container_desktop_relay.commands.bench",
                      "container_desktop_relay.commands.doctor",
                      "container_desktop_relay.commands.status",
                      "container_desktop_relay.runtime.spawn", "docker")


def test_server_role_imports_none_of_the_client_side() -> None:
    """aiohttp (status/doctor), bench, doctor, the client and its spawner stay unimported."""
    done = subprocess.run([sys.executable, "-c", SERVER_IMPORTS], capture_output=True,
                          text=True, timeout=120, check=True)
    loaded = set(json.loads(done.stdout))
    assert "container_desktop_relay.ssh.server" in loaded  # the probe imported the role
    assert not [m for m in NOT_FOR_THE_SERVER if m in loaded]
