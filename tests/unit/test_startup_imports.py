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


# What `container-desktop-relay completion SHELL` does: every command's parser, every shell.
COMPLETION_IMPORTS = """
import json, sys
from container_desktop_relay.commands.completion import SHELLS, script
for shell in SHELLS:
    script(shell)
print(json.dumps(sorted(sys.modules)))
"""
#: What no command's flags need: the SSH library, the HTTP client, the commands' work.
NOT_FOR_THE_FLAGS = ("asyncssh", "aiohttp", "container_desktop_relay.ssh",
                     "container_desktop_relay.runtime", "container_desktop_relay.observability",
                     "container_desktop_relay.commands.bench.command",
                     "container_desktop_relay.commands.doctor",
                     "container_desktop_relay.commands.status")


def test_completion_imports_no_command_implementation() -> None:
    """The completion scripts, built from every command's flags, load none of the heavy
    libraries nor what the commands do (asyncssh alone costs 0.3-0.8 s)."""
    done = subprocess.run([sys.executable, "-c", COMPLETION_IMPORTS], capture_output=True,
                          text=True, timeout=120, check=True)
    loaded = set(json.loads(done.stdout))
    assert "container_desktop_relay.commands.registry" in loaded and "shtab" in loaded
    assert not [m for m in NOT_FOR_THE_FLAGS if m in loaded]
