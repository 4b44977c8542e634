"""``doctor``: check the client's set-up step by step, each ok/FAIL with the exact fix.

Checks run in the order a connection travels: configuration, key files, known_hosts, the SSH
server, authentication, the channel and the Docker API behind it, then the local endpoint end
to end and the observability endpoints. A check whose prerequisite failed is skipped. Nothing
is written: known_hosts, keys and sockets are only read. The SSH steps connect with the
client's own options (:mod:`~container_desktop_relay.ssh.options`); the local-side steps are
in :mod:`~container_desktop_relay.commands.doctor_steps`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncssh

from container_desktop_relay.commands.doctor_steps import (
    PING,
    Failed,
    check_endpoint,
    check_observability,
    ping_stream,
    reason_of,
)
from container_desktop_relay.config import Config, load_config
from container_desktop_relay.durations import parse_duration
from container_desktop_relay.endpoints import Endpoint
from container_desktop_relay.errors import ConfigError, RelayError
from container_desktop_relay.ssh import tune as sshtune
from container_desktop_relay.ssh.forwards import Forward

__all__ = ["PING", "Check", "Doctor", "Failed", "main", "ping_stream"]

OK, FAIL, SKIP = "ok", "FAIL", "skip"


@dataclass(slots=True)
class Check:
    """One step's outcome: ``status`` is ok, FAIL or skip; ``fix`` says what to do on FAIL."""

    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass
class Doctor:
    """Runs the checks for one configuration; ``checks`` fills in as they run."""

    config: Config | None
    config_error: str = ""
    timeout: float = 5.0
    checks: list[Check] = field(default_factory=list)
    _identity: asyncssh.SSHKey | None = None
    _host_key: asyncssh.SSHKey | None = None
    _conn: asyncssh.SSHClientConnection | None = None
    _streams: list[tuple[str, Any, Any]] = field(default_factory=list)

    async def run(self, report: Callable[[Check], None] | None = None) -> list[Check]:
        """Every check in order (dependent ones skipped after a failure); ``report`` sees each
        check as soon as it is done."""
        steps: list[tuple[str, Callable[[], Awaitable[str]], tuple[str, ...]]] = [
            ("config loads", self.check_config, ()),
            ("asyncssh patches", self.check_patches, ("config loads",)),
            ("identity key", self.check_identity, ("config loads",)),
            ("authorized_keys", self.check_authorized, ("identity key",)),
            ("known_hosts", self.check_known_hosts, ("config loads",)),
            ("server answers SSH", self.check_server, ("known_hosts",)),
            ("authentication", self.check_auth, ("server answers SSH", "identity key")),
            ("remote socket channel", self.check_channel, ("authentication",)),
            ("remote Docker API", self.check_remote_ping, ("remote socket channel",)),
            ("local endpoint", self.check_local, ("config loads",)),
            ("observability", self.check_observability, ("config loads",)),
        ]
        status: dict[str, str] = {}
        try:
            for name, step, needs in steps:
                missing = [n for n in needs if status.get(n) != OK]
                if missing:
                    check = Check(name, SKIP, f"skipped: '{missing[0]}' did not pass")
                else:
                    check = await self._one(name, step)
                status[name] = check.status
                self.checks.append(check)
                if report is not None:
                    report(check)
        finally:
            if self._conn is not None:
                self._conn.close()
        return self.checks

    async def _one(self, name: str, step: Callable[[], Awaitable[str]]) -> Check:
        try:
            async with asyncio.timeout(self.timeout * 2):
                return Check(name, OK, await step())
        except Failed as exc:
            return Check(name, FAIL, exc.detail, exc.fix)
        except RelayError as exc:  # e.g. an unreadable known_hosts: the relay's own message
            return Check(name, FAIL, str(exc), "see docs/troubleshooting.md for this message")
        except TimeoutError:
            return Check(name, FAIL, f"no answer within {self.timeout * 2:g}s",
                         "check that the server and the network path are up")

    # ------------------------------------------------------------------ checks
    @property
    def cfg(self) -> Config:
        assert self.config is not None
        return self.config

    async def check_config(self) -> str:
        if self.config is None:
            raise Failed(self.config_error,
                         "correct that value (every key: docs/configuration.md or "
                         "container-desktop-relay config-docs)")
        from container_desktop_relay.ssh.client import resolve_target

        forwards = self._forwards()
        if len(forwards) == 1:
            return f"server {resolve_target(self.cfg)}, local endpoint {self._endpoint_url()}"
        target = resolve_target(self.cfg)
        return (f"server ssh://{target.user}@{target.host}:{target.port}, forwards "
                + ", ".join(str(fwd) for fwd in forwards))

    def _forwards(self) -> list[Forward]:
        """The client's forwards (the single form is one)."""
        from container_desktop_relay.ssh.forwards import client_forwards

        return client_forwards(self.cfg)

    async def check_patches(self) -> str:
        rep = sshtune.apply(self.cfg.asyncssh_patches)
        active, left = rep["active"], rep["not_applied"]
        text = (f"asyncssh {rep['asyncssh']}, asyncssh_patches={rep['mode']}: "
                f"{len(active)} of {len(active) + len(left)} active")
        if left:
            text += "; not applied: " + "; ".join(f"{k} ({v})" for k, v in left.items())
        return text

    async def check_identity(self) -> str:
        from container_desktop_relay.errors import KeyFileError
        from container_desktop_relay.ssh.keys import load_private_key

        path = self.cfg.path("identity_path")
        try:
            self._identity = load_private_key(path)
        except KeyFileError as exc:
            if not path.exists():
                fix = (f"create it: container-desktop-relay keygen --identity-path {path}")
            elif "is a public key" in str(exc):
                fix = f"pass the private key: --identity-path {path.with_suffix('')}" \
                    if path.suffix == ".pub" else "pass the private key to --identity-path"
            elif "0600" in str(exc):
                fix = f"chmod 600 {path}"
            else:
                fix = f"replace {path} with an unencrypted OpenSSH or PEM private key"
            raise Failed(str(exc), fix) from None
        from container_desktop_relay.ssh.mounts import on_windows_drive, windows_drive_rule

        modes = "mode not checked" if on_windows_drive(path) else "mode 0600"
        return (f"{path} ({self._identity.get_algorithm()} "
                f"{self._identity.get_fingerprint('sha256')}), {modes}; "
                f"{windows_drive_rule(path)}")

    async def check_authorized(self) -> str:
        from container_desktop_relay.errors import KeyFileError
        from container_desktop_relay.ssh.authkeys import read_authorized_keys
        from container_desktop_relay.ssh.keys import check_not_writable_by_others

        assert self._identity is not None
        path = self.cfg.path("authorized_keys_path")
        used = self._authorized_keys_use()
        if used is None:
            return (f"not used: this client does not spawn its server and {path} was not "
                    "given, so the server's own authorized_keys decides (see "
                    "'authentication')")
        try:
            check_not_writable_by_others(path, "authorized keys")
            listed = read_authorized_keys(path)
        except KeyFileError as exc:
            fix = f"chmod go-w {path}" if "writable" in str(exc) else f"chown $USER {path}"
            raise Failed(str(exc), fix) from None
        lines = [e for e in listed.entries if e.key.public_data == self._identity.public_data]
        if lines:  # the first line with the key is the one sshd and the relay use
            entry = lines[0]
            why = entry.refused or entry.forwarding_refused or (
                "cert-authority: it accepts certificates, not the key itself"
                if entry.cert_authority else None)
            if why is not None:
                raise Failed(f"{path} line {entry.lineno} lists the identity's public key, but "
                             f"{why}", f"remove that option from {path} line {entry.lineno}")
            limit = f' (only from="{entry.option("from")}")' if entry.option("from") else ""
            return (f"{path} line {entry.lineno} holds the identity's public key{limit} "
                    f"({used})")
        where = "does not exist" if not path.exists() else "does not hold the identity's key"
        raise Failed(
            f"{path} {where}",
            f"container-desktop-relay keygen --identity-path {self.cfg.path('identity_path')} "
            f"--authorized-keys-path {path} (keeps the key, appends its public half)",
        )

    def _authorized_keys_use(self) -> str | None:
        """Why this set-up reads ``authorized_keys_path``, or None when it never does.

        The client itself never reads it: a server it spawns does, ``--generate-key-pair``
        appends to it, and a path given explicitly names the file of a server on this machine.
        """
        cfg = self.cfg
        if cfg.distribution:
            return "the server this client spawns authorizes keys from it"
        if cfg.generate_key_pair:
            return "--generate-key-pair adds the key to it"
        source = cfg.source_of("authorized_keys_path")
        if source is not None:
            return f"given by {source} for the server on this machine"
        return None

    async def check_known_hosts(self) -> str:
        from container_desktop_relay.ssh.client import resolve_target
        from container_desktop_relay.ssh.hostkeys import HostKeyPolicy, fingerprint, host_label

        target = resolve_target(self.cfg)
        if self.cfg.distribution:
            return ("not used: the server this client spawns presents the identity key, "
                    "which is expected instead")
        path = self.cfg.path("known_hosts_path")
        policy = HostKeyPolicy(path, secure=self.cfg.secure_host_key)
        named = policy.entries_for(target.host, target.port)
        label = host_label(target.host, target.port)
        revoked = {e.key.public_data: e.line for e in named if e.revoked}
        entries = [e for e in named if not e.revoked and not e.cert_authority]
        for entry in entries:
            if entry.key.public_data in revoked:
                raise Failed(
                    f"{path} line {entry.line} pins {fingerprint(entry.key)} for {label}, but "
                    f"line {revoked[entry.key.public_data]} marks that key @revoked, so it is "
                    "refused",
                    f"delete line {entry.line} and pin the server's current key (ssh-keyscan "
                    f"-p {target.port} {target.host}, then compare the fingerprint)")
        cas = [e for e in named if e.cert_authority and e.key.public_data not in revoked]
        shown_cas = "; trusts host certificates from " + ", ".join(
            f"line {e.line}: @cert-authority {fingerprint(e.key)}" for e in cas) if cas else ""
        if entries:
            shown = ", ".join(f"line {e.line}: {fingerprint(e.key)}" for e in entries)
            return f"{path} pins {label} ({shown}){shown_cas}"
        if cas:
            return f"{path} pins no key for {label}{shown_cas}"
        if self.cfg.secure_host_key:
            raise Failed(
                f"{path} has no key for {label} and --secure-host-key is on",
                f"ssh-keyscan -p {target.port} {target.host} >> {path} (then compare the "
                "fingerprint with the server's), or turn --secure-host-key off to trust on "
                "first use",
            )
        return (f"{path} has no key for {label} yet; the client records it on first connect "
                "(trust on first use)")

    def _pinned(self) -> list[asyncssh.SSHKey]:
        from container_desktop_relay.ssh.client import resolve_target
        from container_desktop_relay.ssh.hostkeys import HostKeyPolicy

        target = resolve_target(self.cfg)
        if self.cfg.distribution:
            return [self._identity] if self._identity is not None else []
        policy = HostKeyPolicy(self.cfg.path("known_hosts_path"),
                               secure=self.cfg.secure_host_key)
        return policy.trusted_keys(target.host, target.port)  # revoked keys left out

    async def check_server(self) -> str:
        from container_desktop_relay.ssh.client import resolve_target
        from container_desktop_relay.ssh.hostkeys import fingerprint, host_key_algs, host_label
        from container_desktop_relay.ssh.options import host_key_options

        target = resolve_target(self.cfg)
        where = f"{target.host}:{target.port}"
        pinned = self._pinned()
        try:
            key = await asyncssh.get_server_host_key(
                target.host, target.port, **host_key_options(host_key_algs(pinned)))
        except ConnectionRefusedError:
            raise Failed(f"nothing listens on {where} (connection refused)",
                         self._start_server_fix()) from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise Failed(f"{where} did not complete an SSH handshake: "
                         f"{reason_of(exc)}", self._start_server_fix()) from None
        if key is None:
            raise Failed(f"{where} offered no host key", self._start_server_fix())
        self._host_key = key
        if pinned and not any(k.public_data == key.public_data for k in pinned):
            label = host_label(target.host, target.port)
            source = ("the identity key (the server this client spawns must present it)"
                      if self.cfg.distribution else
                      f"the key pinned in {self.cfg.path('known_hosts_path')}")
            raise Failed(
                f"host key of {label} changed: the server presents {fingerprint(key)}, not "
                f"{fingerprint(pinned[0])}, {source}",
                "if the server was re-keyed on purpose: ssh-keygen -R "
                f"'{label}' -f {self.cfg.path('known_hosts_path')}; otherwise find out who "
                f"answers on {where} before connecting",
            )
        return f"{where} presents {fingerprint(key)}" + (" (matches the pinned key)"
                                                         if pinned else "")

    def _start_server_fix(self) -> str:
        from container_desktop_relay.ssh.client import resolve_target

        target = resolve_target(self.cfg)
        if self.cfg.distribution:
            return (f"start the client; it spawns the server in WSL distribution "
                    f"{self.cfg.distribution} ({self.cfg.relay_program_path} server --port "
                    f"{target.port}); its log says why the server did not come up")
        return (f"start the server: container-desktop-relay server --host {target.host} "
                f"--port {target.port} (or systemctl start container-desktop-relay), or "
                "correct --ssh-connection / --port")

    async def check_auth(self) -> str:
        from container_desktop_relay.ssh.client import resolve_target
        from container_desktop_relay.ssh.hostkeys import host_key_algs
        from container_desktop_relay.ssh.options import connect_options

        target = resolve_target(self.cfg)
        assert self._host_key is not None and self._identity is not None
        identity = self.cfg.path("identity_path")
        try:  # the client's own options, with the host key just checked as the only one
            self._conn = await asyncssh.connect(
                target.host, target.port, login_timeout=self.timeout, **connect_options(
                    self.cfg, target, self._identity, known_hosts=([self._host_key], [], []),
                    server_host_key_algs=host_key_algs([self._host_key])))
        except asyncssh.PermissionDenied:
            raise Failed(
                f"the server refused the key {identity} for user {target.user}",
                "authorize it where the server runs: container-desktop-relay keygen "
                f"--identity-path {identity} --authorized-keys-path <the server's "
                "--authorized-keys-path> (same key file), or append the OpenSSH line of "
                f"{identity} to the server's authorized_keys",
            ) from None
        except (OSError, asyncssh.Error) as exc:
            raise Failed(f"SSH login failed: {reason_of(exc)}", self._start_server_fix()) from None
        return f"logged in as {target.user} with {identity}"

    async def check_channel(self) -> str:
        """A channel to every forward's remote socket opens (a missing one named)."""
        assert self._conn is not None
        forwards = self._forwards()
        refused: list[str] = []
        for fwd in forwards:
            try:
                reader, writer = await self._conn.open_unix_connection(fwd.remote)
            except asyncssh.ChannelOpenError as exc:
                named = f" (forward {fwd.name})" if len(forwards) > 1 else ""
                refused.append(f"{fwd.remote}{named}: {exc.reason}")
                continue
            self._streams.append((fwd.remote, reader, writer))
        if refused:
            for _, _, writer in self._streams:
                writer.close()
            self._streams.clear()
            where = ("--forward LOCAL=REMOTE" if self.cfg.forward
                     else "--ssh-connection ssh://user@host:port/path")
            raise Failed(
                "the server refused a channel to " + "; to ".join(refused),
                "start the container engine that owns that socket (e.g. systemctl start "
                f"docker, or podman system service) or point {where} at its socket",
            )
        return ("a direct-streamlocal channel to "
                + ", ".join(path for path, _, _ in self._streams) + " opened")

    async def check_remote_ping(self) -> str:
        """Every remote socket answers the Docker API's GET /_ping."""
        assert self._streams
        wrongs: list[str] = []
        for path, reader, writer in self._streams:
            try:
                wrong = await ping_stream(reader, writer, self.timeout)
            finally:
                writer.close()
            if wrong:
                wrongs.append(f"{path} {wrong} to GET /_ping")
        if wrongs:
            where = "--forward's REMOTE" if self.cfg.forward else "--ssh-connection"
            raise Failed("; ".join(wrongs),
                         f"point {where} at the Docker API socket; "
                         f"{wrongs[0].split(' ')[0]} is something else")
        verb = " answers" if len(self._streams) == 1 else " answer"
        return ", ".join(path for path, _, _ in self._streams) + verb + " GET /_ping with OK"

    def _endpoint_url(self) -> str:
        return self.cfg.listen or self.cfg.named_pipe

    async def check_local(self) -> str:
        """Every local endpoint is the client's and answers GET /_ping end to end."""
        details = []
        for fwd in self._forwards():
            details.append(await check_endpoint(fwd.endpoint, self._start_fix(fwd.endpoint),
                                                self.timeout))
        return "; ".join(details)

    def _start_fix(self, endpoint: Endpoint) -> str:
        from container_desktop_relay.ssh.client import resolve_target

        if self.cfg.forward:
            return ("start the client: container-desktop-relay client "
                    + " ".join(f"--forward {fwd}" for fwd in self._forwards())
                    + f" --ssh-connection {self.cfg.ssh_connection}")
        return ("start the client: container-desktop-relay client --listen "
                f"{endpoint.url} --ssh-connection {resolve_target(self.cfg)}")

    async def check_observability(self) -> str:
        """The client's endpoints answer (a default port taken by another is no failure)."""
        return await check_observability(self.cfg, self.timeout)


def render(check: Check) -> str:
    """One check for people: a status line, the fix indented under a failure."""
    text = f"{check.status:<4}  {check.name}: {check.detail}\n"
    return text + (f"      fix: {check.fix}\n" if check.fix else "")


def _print(check: Check) -> None:
    sys.stdout.write(render(check))
    sys.stdout.flush()


def summary(checks: Sequence[Check]) -> str:
    """The last line: all passed, or how many failed and were skipped."""
    if all(c.status == OK for c in checks):
        return "all checks passed"
    failed = sum(c.status == FAIL for c in checks)
    skipped = sum(c.status == SKIP for c in checks)
    return f"{failed} check(s) failed, {skipped} skipped"


def main(namespace: argparse.Namespace, environ: dict[str, str] | None = None) -> int:
    """Run the doctor with its parsed flags (see commands.registry); exit status 0 when every
    check passes, 1 otherwise.

    Raises:
        ConfigError: a bad --timeout (exit 2).
    """
    args = dict(vars(namespace))
    as_json = args.pop("json")
    try:
        timeout = parse_duration(args.pop("timeout"))
    except ValueError:
        raise ConfigError("invalid --timeout: must be a duration like \"5s\"") from None
    config_path = args.pop("config_file", None)
    try:
        config: Config | None = load_config(args, config_path=config_path, environ=environ)
        error = ""
    except RelayError as exc:
        config, error = None, str(exc)
    doctor = Doctor(config, error, timeout=timeout)
    checks = asyncio.run(doctor.run(None if as_json else _print))
    ok = all(c.status == OK for c in checks)
    if as_json:
        print(json.dumps({"ok": ok, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        print(summary(checks))
    return 0 if ok else 1
