"""systemd units for the server role (system and user), rendered and installed by one command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from container_desktop_relay.errors import ConfigError, RelayError

__all__ = ["UNIT_NAME", "default_command", "render_unit", "run", "unit_dir"]

UNIT_NAME = "container-desktop-relay.service"
DOCS = "https://github.com/container-desktop/container-desktop-relay/blob/main/docs/quickstart.md"
#: The ExecStart program in the units under contrib/systemd (a pip install as root puts it here).
CONTRIB_COMMAND = ("/usr/local/bin/container-desktop-relay",)

# Sandboxing shared by both units. Everything the server does: read its key files, listen on
# TCP (and /health, /metrics), connect to Unix sockets. connect() on a socket works on a
# read-only mount, so ProtectSystem=strict needs no ReadWritePaths for the target socket.
_COMMON_HARDENING = """\
NoNewPrivileges=yes
ProtectSystem=strict
PrivateTmp=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
# CPython, uvloop, cryptography and asyncssh never map writable+executable memory (the tests
# run the server under the kernel's equivalent, PR_SET_MDWE).
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM
UMask=0077
"""

_SYSTEM = """\
# container-desktop-relay: the server role as a system service (Linux outside WSL).
# Installed by `container-desktop-relay install-service`; documentation: {docs}
#
# Keys live in /var/lib/container-desktop-relay (mode 0700): the first start creates id_rsa
# (the host key and identity); append each client's public key to authorized_keys there.
# Settings: /etc/container-desktop-relay/env holds CDR_* variables (docs/configuration.md),
# e.g. CDR_HOST=0.0.0.0 to accept remote clients, CDR_ALLOW_SOCKET=/run/docker.sock.
[Unit]
Description=container-desktop-relay SSH relay (server role)
Documentation={docs}
After=network.target

[Service]
Type=exec
Environment=CDR_IDENTITY_PATH=%S/container-desktop-relay/id_rsa
Environment=CDR_AUTHORIZED_KEYS_PATH=%S/container-desktop-relay/authorized_keys
Environment=CDR_GENERATE_KEY_PAIR=true
Environment=LOG_LEVEL=info
EnvironmentFile=-%E/container-desktop-relay/env
ExecStart={exec_start} server
Restart=on-failure
RestartSec=2s
TimeoutStopSec=20s
StateDirectory=container-desktop-relay
StateDirectoryMode=0700
ConfigurationDirectory=container-desktop-relay
ConfigurationDirectoryMode=0755
# Root without any capability: it owns root's sockets (docker.sock, podman.sock) and binds
# ports above 1023, nothing more. Home directories are invisible; to forward to a rootless
# Podman socket under /run/user, use the user unit (install-service --user) instead.
CapabilityBoundingSet=
AmbientCapabilities=
ProtectHome=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
{hardening}
[Install]
WantedBy=multi-user.target
"""

_USER = """\
# container-desktop-relay: the server role as a user service (systemctl --user).
# Installed by `container-desktop-relay install-service --user`; documentation: {docs}
#
# Keys are the relay's defaults, ~/.ssh/id_rsa and ~/.ssh/authorized_keys: run
# `container-desktop-relay keygen` once before the first start. The service only reads them,
# so home stays read-only (ProtectHome=read-only, not =yes: the keys and a rootless Podman
# socket under /run/user must stay reachable).
# Settings: ~/.config/container-desktop-relay/env holds CDR_* variables (docs/configuration.md).
[Unit]
Description=container-desktop-relay SSH relay (server role, user service)
Documentation={docs}

[Service]
Type=exec
Environment=LOG_LEVEL=info
EnvironmentFile=-%E/container-desktop-relay/env
ExecStart={exec_start} server
Restart=on-failure
RestartSec=2s
TimeoutStopSec=20s
ProtectHome=read-only
{hardening}
[Install]
WantedBy=default.target
"""


def default_command() -> tuple[str, ...]:
    """How this installation is started: its console script, else ``python -m``."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script and script.name == "container-desktop-relay" and script.is_file():
        return (os.path.abspath(script),)
    return (sys.executable, "-m", "container_desktop_relay")


def _quote(word: str) -> str:
    """One ExecStart word: ``%`` escaped, quoted when it holds whitespace or quotes."""
    word = word.replace("%", "%%")
    if any(c.isspace() or c in "\"'\\;" for c in word):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def render_unit(*, user: bool, command: Sequence[str] = CONTRIB_COMMAND) -> str:
    """The unit file text; ``command`` is the program (and arguments) that runs the relay."""
    exec_start = " ".join(_quote(w) for w in command)
    template = _USER if user else _SYSTEM
    return template.format(docs=DOCS, exec_start=exec_start, hardening=_COMMON_HARDENING)


def unit_dir(*, user: bool) -> Path:
    """Where systemd looks for administrator units: /etc/systemd/system or ~/.config/..."""
    if user:
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        return Path(base) / "systemd" / "user"
    return Path("/etc/systemd/system")


def run(args: argparse.Namespace) -> int:
    """``install-service``: print or write the unit, then say how to enable it (flags: see
    commands.registry).

    Raises:
        ConfigError: ``--unit-dir`` is not an existing directory (exit 2).
        RelayError: the unit cannot be written (exit 1).
    """
    text = render_unit(user=args.user, command=default_command())
    if args.print_only:
        sys.stdout.write(text)
        return 0
    directory = Path(args.unit_dir) if args.unit_dir else unit_dir(user=args.user)
    if args.unit_dir and not directory.is_dir():  # a typo must not become a new directory
        raise ConfigError(f"invalid --unit-dir {directory}: no such directory; create it "
                          f"first, or leave --unit-dir out for {unit_dir(user=args.user)}")
    target = directory / UNIT_NAME
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{UNIT_NAME}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)
        os.replace(tmp, target)
    except OSError as exc:
        hint = "" if args.user else " (run as root, or use --user)"
        raise RelayError(f"cannot write {target}: {exc.strerror or exc}{hint}") from None
    ctl = "systemctl --user" if args.user else "systemctl"
    print(f"wrote {target}")
    if args.user:
        print("keys: container-desktop-relay keygen (once); to run without a login session: "
              "loginctl enable-linger $USER")
    print(f"enable and start: {ctl} daemon-reload && {ctl} enable --now {UNIT_NAME}")
    return 0
