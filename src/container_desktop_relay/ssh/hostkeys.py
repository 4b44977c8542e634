"""Server host-key checking for the client: known_hosts pinning, trust on first use, strict mode.

Policy, in order:

1. When the client spawned the server itself, the server's host key is the shared identity key,
   so exactly that key is expected and known_hosts is neither read nor written.
2. Otherwise the host's entries in known_hosts (``host`` for port 22, ``[host]:port`` else;
   plain, wildcard or hashed ``|1|`` patterns) are the pinned keys. A key that differs from
   a pinned one is always refused, naming the file and line. A key under ``@revoked`` (for a
   pattern naming this host) is refused even where it is also pinned, as ssh refuses it
   ("REVOKED HOST KEY DETECTED"). ``@cert-authority`` keys for the host are trusted to sign
   the server's host certificate (its principals must name the host); a certificate from any
   other CA is refused, naming the CA.
3. A host with no entry is refused under ``--secure-host-key``; otherwise its key is accepted
   and appended to known_hosts (like OpenSSH's ``StrictHostKeyChecking accept-new``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh
from asyncssh.public_key import get_default_certificate_algs, get_default_public_key_algs

from container_desktop_relay.errors import HostKeyMismatch, HostKeyUnknown, KeyFileError
from container_desktop_relay.log import get_logger
from container_desktop_relay.ssh.keys import append_line

__all__ = ["HostKeyPolicy", "KnownHost", "host_key_algs", "host_label", "read_known_hosts"]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class KnownHost:
    """One key line of a known_hosts file."""

    line: int
    patterns: tuple[str, ...]
    key: asyncssh.SSHKey
    revoked: bool = False
    cert_authority: bool = False


def host_label(host: str, port: int) -> str:
    """How known_hosts names ``host``: bare for port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: asyncssh.SSHKey) -> str:
    """``ssh-rsa SHA256:...`` for messages."""
    return f"{key.get_algorithm()} {key.get_fingerprint('sha256')}"


def host_key_algs(trusted: list[asyncssh.SSHKey], *, certificates: bool = False) -> list[str]:
    """Host-key algorithms to offer: those of the pinned keys first, then every default one
    (certificate algorithms first when a ``@cert-authority`` key is trusted for the host).

    Offering the others too (as OpenSSH does) lets a server whose key *type* changed be
    reported as a changed key rather than as a failed key exchange.
    """
    algs: list[bytes] = list(get_default_certificate_algs()) if certificates else []
    for key in trusted:
        algs.extend(a for a in key.sig_algorithms if a not in algs)
    algs.extend(a for a in get_default_public_key_algs() if a not in algs)
    return [a.decode("ascii") for a in algs]


def read_known_hosts(path: Path, warn: Callable[[str, dict[str, object]], None] | None = None,
                     ) -> list[KnownHost]:
    """The key entries of ``path`` (a missing file has none); unparsable lines are skipped,
    each reported to ``warn(event, fields)`` naming the file and line.

    Raises:
        KeyFileError: the file exists but cannot be read.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KeyFileError(f"cannot read known hosts {path}: {exc.strerror or exc}") from None
    entries: list[KnownHost] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        marker = ""
        if fields[0].startswith("@"):
            marker, fields = fields[0], fields[1:]
        why = ""
        if marker not in ("", "@revoked", "@cert-authority"):
            why = f"unknown marker {marker} (allowed: @revoked, @cert-authority)"
        elif len(fields) < 3:
            why = "expected: [marker] host-patterns keytype base64 [comment]"
        else:
            try:
                key = asyncssh.import_public_key(f"{fields[1]} {fields[2]}")
            except (asyncssh.KeyImportError, ValueError) as exc:
                why = f"not a public key: {exc}"
        if why:
            if warn is not None:
                warn("known_hosts_line_skipped",
                     {"path": str(path), "line": number, "reason": why})
            continue
        entries.append(KnownHost(number, tuple(fields[0].split(",")), key,
                                 revoked=marker == "@revoked",
                                 cert_authority=marker == "@cert-authority"))
    return entries


def _hashed_match(pattern: str, name: str) -> bool:
    """Whether an OpenSSH hashed name ``|1|salt|hash`` stands for ``name``."""
    parts = pattern.split("|")
    if len(parts) != 4 or parts[1] != "1":
        return False
    try:
        salt = base64.b64decode(parts[2])
        expected = base64.b64decode(parts[3])
    except ValueError:
        return False
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return hmac.compare_digest(digest, expected)


def _glob(pattern: str, name: str) -> bool:
    """OpenSSH wildcard match: only ``*`` and ``?`` are special (brackets are literal)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.IGNORECASE | re.DOTALL) is not None


def _matches(patterns: tuple[str, ...], names: list[str]) -> bool:
    """OpenSSH host-pattern matching: any positive match and no negated match."""
    positive = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        if body.startswith("|"):
            hit = any(_hashed_match(body, n) for n in names)
        else:
            hit = any(_glob(body, n) for n in names)
        if hit and negated:
            return False
        positive = positive or hit
    return positive


class HostKeyPolicy:
    """Decides whether a server host key is acceptable and records first-use keys."""

    def __init__(self, known_hosts: Path, *, secure: bool,
                 expected: asyncssh.SSHKey | None = None, expected_source: str = "") -> None:
        self.known_hosts = known_hosts
        self.secure = secure
        self.expected = expected.convert_to_public() if expected is not None else None
        self.expected_source = expected_source
        self.refusal: Exception | None = None
        self.pending_record: tuple[str, asyncssh.SSHKey] | None = None
        self._warned: set[tuple[object, ...]] = set()

    def _warn_once(self, event: str, fields: dict[str, object]) -> None:
        seen = (event, *fields.values())
        if seen not in self._warned:  # the file is re-read on every (re)connection
            self._warned.add(seen)
            log.warning(event, extra=fields)

    def entries_for(self, host: str, port: int, addr: str = "") -> list[KnownHost]:
        """The known_hosts entries that name this server (by host name or address)."""
        names = [host_label(host, port)]
        if addr and addr != host:
            names.append(host_label(addr, port))
        return [e for e in read_known_hosts(self.known_hosts, self._warn_once)
                if _matches(e.patterns, names)]

    def trusted_keys(self, host: str, port: int) -> list[asyncssh.SSHKey]:
        """Keys to hand asyncssh as already trusted (it prefers their algorithms in the kex).

        A key revoked anywhere in the file is left out, so it reaches :meth:`check`, which
        refuses it when its ``@revoked`` line names this host (by name or address).
        """
        if self.expected is not None:
            return [self.expected]
        revoked = {e.key.public_data for e in read_known_hosts(self.known_hosts) if e.revoked}
        return [e.key for e in self.entries_for(host, port)
                if not e.revoked and not e.cert_authority and e.key.public_data not in revoked]

    def host_cas(self, host: str, port: int) -> tuple[list[asyncssh.SSHKey],
                                                      list[asyncssh.SSHKey]]:
        """(``@cert-authority`` keys, ``@revoked`` keys) for this host, for asyncssh's check of
        a host certificate (a revoked CA or certificate key is refused)."""
        if self.expected is not None:
            return [], []
        entries = self.entries_for(host, port)
        revoked = [e.key for e in entries if e.revoked]
        gone = {k.public_data for k in revoked}
        cas = [e.key for e in entries if e.cert_authority and e.key.public_data not in gone]
        # Without a CA there is no certificate to check: a revoked plain key then reaches
        # check(), whose refusal names the line.
        return cas, revoked if cas else []

    def expects_certificate(self, host: str, port: int) -> bool:
        """Whether a ``@cert-authority`` line names this host (even one revoked since), so
        the server is asked for its host certificate first, as ssh asks for it."""
        return self.expected is None and any(e.cert_authority
                                             for e in self.entries_for(host, port))

    def revoked_refusal(self, host: str, port: int, why: str) -> HostKeyMismatch:
        """The refusal for a host certificate asyncssh found revoked (``why``)."""
        lines = [str(e.line) for e in self.entries_for(host, port) if e.revoked]
        return HostKeyMismatch(
            f"host key of {host_label(host, port)} was refused: {why} (@revoked in "
            f"{self.known_hosts} line {', '.join(lines)})"
        )

    def refuse_ca(self, host: str, port: int, ca: asyncssh.SSHKey) -> None:
        """Remember why a host certificate signed by the untrusted ``ca`` is refused."""
        for entry in self.entries_for(host, port):
            if entry.revoked and entry.key.public_data == ca.public_data:
                self.refusal = HostKeyMismatch(
                    f"host certificate of {host_label(host, port)} is signed by CA "
                    f"{fingerprint(ca)}, which is marked @revoked in {self.known_hosts} "
                    f"line {entry.line}"
                )
                return
        self.refusal = HostKeyMismatch(
            f"host certificate of {host_label(host, port)} is signed by CA {fingerprint(ca)}, "
            f"which no @cert-authority line of {self.known_hosts} trusts for that host; add "
            f"'@cert-authority {host_label(host, port)} <CA public key>' if you trust it"
        )

    def check(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        """Whether ``key`` (not among :meth:`trusted_keys`) may be accepted; remembers why not.

        Called from the key exchange; a first-use key is only recorded by :meth:`commit` once
        the server has proven it holds the private half.
        """
        self.refusal = None
        self.pending_record = None
        label = host_label(host, port)
        if self.expected is not None:
            self.refusal = HostKeyMismatch(
                f"host key of {label} is {fingerprint(key)}, but the server this client "
                f"spawned must present its identity key {fingerprint(self.expected)} "
                f"({self.expected_source})"
            )
            return False
        entries = self.entries_for(host, port, addr)
        for entry in entries:
            if entry.revoked and entry.key.public_data == key.public_data:
                self.refusal = HostKeyMismatch(
                    f"host key {fingerprint(key)} of {label} is marked @revoked in "
                    f"{self.known_hosts} line {entry.line}"
                )
                return False
        pinned = [e for e in entries if not e.revoked and not e.cert_authority]
        if any(e.key.public_data == key.public_data for e in pinned):
            return True  # pinned under the server's address rather than its name
        if pinned:
            first = pinned[0]
            self.refusal = HostKeyMismatch(
                f"host key of {label} changed: the server presented {fingerprint(key)} but "
                f"{self.known_hosts} line {first.line} records {fingerprint(first.key)}; "
                "if the server was re-keyed on purpose, delete that line"
            )
            return False
        if self.secure:
            self.refusal = HostKeyUnknown(
                f"host key {fingerprint(key)} of {label} is not in {self.known_hosts} and "
                "--secure-host-key is on; add it there (ssh-keyscan) or turn strict "
                "checking off"
            )
            return False
        self.pending_record = (label, key)
        return True

    def commit(self) -> None:
        """Append a first-use key accepted by :meth:`check` to known_hosts (in place, as ssh does).

        Raises:
            KeyFileError: known_hosts cannot be written (the key is still trusted this time).
        """
        pending, self.pending_record = self.pending_record, None
        if pending is None:
            return
        label, key = pending
        path = self.known_hosts
        algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
        line = f"{label} {algorithm} {blob}\n"
        try:
            if not path.parent.exists():
                path.parent.mkdir(parents=True, mode=0o700)
            number = append_line(path, line.encode())
        except OSError as exc:
            raise KeyFileError(
                f"cannot record host key of {label} in {path}: {exc.strerror or exc}"
            ) from None
        log.warning("host_key_recorded", extra={"host": label, "known_hosts": str(path),
                                                "line": number, "fingerprint": fingerprint(key)})

