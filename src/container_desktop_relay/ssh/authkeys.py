"""authorized_keys read with sshd(8)'s semantics: every option enforced, or its line lets nobody in.

sshd reads each line as ``[options] keytype base64 [comment]``. The relay reads the file the
same way, line by line and as bytes (a comment is opaque: bytes that are not UTF-8 change
nothing), and decides per line:

* options are parsed as sshd parses them (names case-insensitive, values in double quotes,
  ``\\"`` the only escape inside them), and a line whose options sshd would reject is skipped
  with one warning naming the file and line;
* ``from=``, ``principals=`` and ``cert-authority`` are handed to asyncssh's own
  authorized-keys support (:func:`asyncssh.import_authorized_keys`), which matches them at
  login; ``expiry-time=`` is checked here when the file is read (the file is re-read for every
  connection);
* ``restrict``, ``no-port-forwarding``, ``port-forwarding`` and ``permitopen=`` decide whether
  the login may open a ``direct-streamlocal`` channel (:attr:`Entry.forwarding_refused`), as
  sshd decides it: ``permitopen`` lists TCP destinations only, so it never grants a Unix socket;
* options about things the relay never does (commands, ptys, X11, agent, tunnels, remote
  forwarding) need no enforcement; any other option makes the line refuse logins, with one
  warning naming the file, line and option: never a silent grant;
* a PEM or RFC 4716 block (``cat id_rsa.pub >> authorized_keys`` with keygen's PEM
  ``id_rsa.pub``) is no key line for sshd, so it lets nobody in here either: it is skipped with
  one warning naming the file, its lines and the OpenSSH line to put there instead
  (:class:`KeyBlock`; docs/security.md says why it is not accepted).
"""

from __future__ import annotations

import calendar
import ipaddress
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from container_desktop_relay.errors import KeyFileError

__all__ = ["LINE_OPTION", "AuthorizedKeys", "AuthorizedKeysReader", "Entry", "KeyBlock",
           "OptionError", "expiry_seconds", "openssh_line", "parse_authorized_keys",
           "read_authorized_keys", "split_options"]

#: Options whose effect the relay has by construction: it runs no session (so no command,
#: environment, pty or rc file), forwards no X11, agent or tunnel, and listens for nobody.
_MOOT = frozenset({
    "command", "environment", "pty", "no-pty", "user-rc", "no-user-rc", "x11-forwarding",
    "no-x11-forwarding", "agent-forwarding", "no-agent-forwarding", "tunnel", "permitlisten",
})
#: Options matched at login by asyncssh, as sshd matches them.
_FOR_ASYNCSSH = frozenset({"from", "principals", "cert-authority", "no-touch-required"})
#: Options that decide whether a streamlocal channel may be opened, or when the line expires.
_DECIDED_HERE = frozenset({"restrict", "port-forwarding", "no-port-forwarding", "permitopen",
                           "expiry-time"})
#: Options that take a value (``name="value"``); every other option is a bare flag.
_WITH_VALUE = frozenset({"command", "environment", "from", "permitopen", "permitlisten",
                         "principals", "tunnel", "expiry-time"})
#: The option asyncssh is handed so a login can be traced back to its line.
LINE_OPTION = "x-container-desktop-relay-line"
#: The first line of a PEM (``-----BEGIN RSA PUBLIC KEY-----``) or RFC 4716
#: (``---- BEGIN SSH2 PUBLIC KEY ----``) block; group 1 is its label.
_BLOCK_BEGIN = re.compile(r"-{4,5} ?BEGIN ([A-Z0-9 ]+?) ?-{4,5}")
#: A line inside such a block: base64 or an RFC 4716 header (``Comment: ...``; one that ends
#: in a backslash continues on the next line).
_BLOCK_BODY = re.compile(r"[A-Za-z0-9+/=]+|[A-Za-z0-9-]+: .*")


class OptionError(ValueError):
    """An options field sshd would reject (the line is skipped)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One key line of an authorized_keys file."""

    lineno: int
    key: asyncssh.SSHKey
    options: tuple[tuple[str, str | None], ...]
    cert_authority: bool
    #: why this line lets nobody in (expired, or an option the relay cannot enforce)
    refused: str | None
    #: why a login through this line may not open a direct-streamlocal channel
    forwarding_refused: str | None
    #: the line as handed to asyncssh (options it matches at login, key; no comment)
    text: str
    #: when the line's expiry-time passes (epoch seconds; None: never)
    expires: float | None = None

    def option(self, name: str) -> str | None:
        """The (last) value of option ``name`` on this line."""
        values = [value for opt, value in self.options if opt == name]
        return values[-1] if values else None


@dataclass(frozen=True, slots=True)
class KeyBlock:
    """A PEM or RFC 4716 key block pasted into the file, which sshd does not read: it lets
    nobody in, and the warning about it gives the OpenSSH line to use instead."""

    first: int
    last: int
    #: its BEGIN line, e.g. "-----BEGIN RSA PUBLIC KEY-----"
    begin: str
    #: the public key it holds (None: a private key, or nothing this program can read)
    key: asyncssh.SSHKey | None

    def reason(self, path: Path) -> str:
        """Why the block lets nobody in, and what to put there instead (one line)."""
        where = f"{path} lines {self.first}-{self.last}"
        head = f"{where} hold a key block ({self.begin})"
        if "PRIVATE" in self.begin:
            return (f"{head}, a private key, which has no place in authorized_keys: delete "
                    "those lines and append the key's OpenSSH line (ssh-keygen -y -f "
                    "PRIVATE_KEY) instead")
        if self.key is None:
            return (f"{head} that holds no public key the relay can read (sshd reads none): "
                    "replace those lines with the key's one-line OpenSSH form (ssh-rsa AAAA...)")
        return (f"{head}, which sshd does not read as a key and neither does the relay: "
                f"replace those lines with this one line: {openssh_line(self.key)}")


@dataclass(slots=True)
class AuthorizedKeys:
    """The lines of one authorized_keys file, as read just now."""

    path: Path
    entries: list[Entry] = field(default_factory=list)
    #: key blocks pasted into the file (skipped, as sshd skips them)
    blocks: list[KeyBlock] = field(default_factory=list)
    _allowed: dict[tuple[bytes, ...], asyncssh.SSHAuthorizedKeys] = field(
        default_factory=dict, repr=False, compare=False)

    @property
    def valid_until(self) -> float:
        """When a line that lets someone in now expires (the file must be read again)."""
        return min((e.expires for e in self.entries
                    if e.expires is not None and e.refused is None), default=math.inf)

    def listed_keys(self) -> list[asyncssh.SSHKey]:
        """Every key the file lists (whatever its options), in file order."""
        return [entry.key for entry in self.entries]

    def for_asyncssh(self, extra: Sequence[asyncssh.SSHKey] = ()) -> asyncssh.SSHAuthorizedKeys:
        """The lines that may let someone in, plus ``extra`` keys without options (built once
        per ``extra``; asyncssh only reads it)."""
        cache_key = tuple(key.public_data for key in extra)
        allowed = self._allowed.get(cache_key)
        if allowed is None:
            lines = [entry.text for entry in self.entries if entry.refused is None]
            lines += [_key_text(key) for key in extra]
            allowed = asyncssh.import_authorized_keys("\n".join(lines)) if lines \
                else asyncssh.SSHAuthorizedKeys()
            self._allowed[cache_key] = allowed
        return allowed

    def entry(self, lineno: int) -> Entry | None:
        """The entry read from line ``lineno``."""
        return next((e for e in self.entries if e.lineno == lineno), None)

    def why_refused(self, key: asyncssh.SSHKey, client_addr: str) -> str:
        """Why ``key`` (which asyncssh did not accept) was refused, naming file and line."""
        reasons = [block.reason(self.path) for block in self.blocks
                   if block.key is not None and block.key.public_data == key.public_data]
        for entry in self.entries:
            if entry.key.public_data != key.public_data:
                continue
            where = f"{self.path} line {entry.lineno}"
            if entry.refused is not None:
                reasons.append(f"{where}: {entry.refused}")
            elif entry.cert_authority:
                reasons.append(f"{where} is a cert-authority key: it accepts certificates it "
                               "signed, not logins with the key itself")
            elif entry.option("from") is not None:
                reasons.append(f"{where}: correct key but {client_addr} is not a permitted "
                               f'host (from="{entry.option("from")}")')
            else:
                reasons.append(f"{where}: not accepted")
        return "; ".join(reasons) or f"key is not in {self.path}"

    def why_refused_ca(self, ca_key: asyncssh.SSHKey, user: str, client_addr: str) -> str:
        """Why a certificate signed by ``ca_key`` (which asyncssh did not accept) was refused."""
        reasons = []
        for entry in self.entries:
            if entry.key.public_data != ca_key.public_data:
                continue
            where = f"{self.path} line {entry.lineno}"
            if entry.refused is not None:
                reasons.append(f"{where}: {entry.refused}")
            elif not entry.cert_authority:
                reasons.append(f"{where} lists the signing key without cert-authority, so it "
                               "accepts the key itself, not certificates it signed")
            else:
                principals = entry.option("principals")
                wanted = (f'one of principals="{principals}"' if principals is not None
                          else f"the user name {user!r}")
                limit = f' from="{entry.option("from")}",' if entry.option("from") else ""
                reasons.append(f"{where}: the certificate must name {wanted},{limit} and be "
                               f"valid now (client {client_addr})")
        return "; ".join(reasons) or f"its CA is not a cert-authority line of {self.path}"


def split_options(text: str) -> tuple[list[tuple[str, str | None]], str]:
    """Split sshd's options field off the front of ``text``; returns (options, the rest).

    As sshd's ``sshkey_advance_past_options`` and ``sshauthopt_parse``: the field ends at the
    first space or tab outside double quotes; a value is ``name="..."`` where ``\\"`` stands
    for a quote; names are case-insensitive.

    Raises:
        OptionError: an unbalanced quote, a value not in quotes, or an empty option.
    """
    options: list[tuple[str, str | None]] = []
    i, n = 0, len(text)
    while True:
        start = i
        while i < n and text[i] not in '=, \t"':
            i += 1
        name = text[start:i].lower()
        if not name:
            raise OptionError(f"empty option name at column {start + 1}")
        value: str | None = None
        if i < n and text[i] == "=":
            i += 1
            if i >= n or text[i] != '"':
                raise OptionError(f"the value of option {name} must be in double quotes")
            i += 1
            chars = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n and text[i + 1] == '"':
                    i += 1
                chars.append(text[i])
                i += 1
            if i >= n:
                raise OptionError(f"unbalanced quote in the value of option {name}")
            i += 1
            value = "".join(chars)
        elif i < n and text[i] == '"':
            raise OptionError(f"unexpected quote after option {name}")
        options.append((name, value))
        if i < n and text[i] == ",":
            i += 1
            continue
        if i >= n or text[i] in " \t":
            return options, text[i:].strip()
        raise OptionError(f"unexpected {text[i]!r} after option {name}")


def _key_text(key: asyncssh.SSHKey) -> str:
    return b" ".join(key.export_public_key("openssh").split()[:2]).decode("ascii")


def openssh_line(key: asyncssh.SSHKey) -> str:
    """``key`` as an authorized_keys line without options or comment (``ssh-rsa AAAA...``)."""
    return _key_text(key)


def _import_key(text: str) -> asyncssh.SSHKey | None:
    """The key at the front of ``keytype base64 [comment]`` (None when there is none)."""
    fields = text.split(None, 2)
    if len(fields) < 2:
        return None
    try:
        return asyncssh.import_public_key(f"{fields[0]} {fields[1]}")
    except (asyncssh.KeyImportError, ValueError):
        return None


def _quote(value: str) -> str:
    """A value quoted for asyncssh's options parser (which takes ``\\`` as an escape)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def expiry_seconds(value: str) -> float:
    """sshd's ``expiry-time`` (``YYYYMMDD[HHMM[SS]][Z]``, local time unless ``Z``) as epoch.

    Raises:
        OptionError: the value is not in that form.
    """
    utc = value.endswith(("Z", "z"))
    digits = value[:-1] if utc else value
    if not digits.isdigit() or len(digits) not in (8, 12, 14):
        raise OptionError(f'expiry-time="{value}" is not YYYYMMDD[HHMM[SS]][Z]')
    fmt = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}[len(digits)]
    try:
        parsed = time.strptime(digits, fmt)
    except ValueError:
        raise OptionError(f'expiry-time="{value}" is not a valid date') from None
    return float(calendar.timegm(parsed) if utc else time.mktime(parsed))


def _forwarding_refused(options: list[tuple[str, str | None]], where: str) -> str | None:
    """Whether sshd would refuse a direct-streamlocal channel to a login through this line."""
    allowed, by = True, ""
    permitopen = False
    for name, _value in options:  # in order: a later flag overrides an earlier one, as in sshd
        if name == "restrict":
            allowed, by = False, "restrict"
        elif name == "no-port-forwarding":
            allowed, by = False, "no-port-forwarding"
        elif name == "port-forwarding":
            allowed = True
        elif name == "permitopen":
            permitopen = True
    if not allowed:
        return f"port forwarding is disabled by {by} ({where})"
    if permitopen:
        return (f"permitopen limits forwarding to the TCP destinations it lists, never a Unix "
                f"socket ({where})")
    return None


def _check_principals(value: str) -> None:
    # asyncssh matches principals as wildcard patterns; sshd compares names literally.
    if any(ch in value for ch in "*?!"):
        raise OptionError(f'principals="{value}" holds a wildcard or negation character, '
                          "which sshd compares literally and the relay cannot")


def _check_from(value: str) -> None:
    for pattern in value.split(","):
        pattern = pattern.removeprefix("!")
        if not pattern:
            raise OptionError(f'from="{value}" holds an empty pattern')
        if "/" in pattern:
            try:
                ipaddress.ip_network(pattern)
            except ValueError:
                raise OptionError(f'from="{value}": {pattern} is not a valid CIDR') from None


def _entry(lineno: int, line: str, where: str, now: float) -> Entry:
    """The entry for one non-blank, non-comment line.

    Raises:
        OptionError: the line holds no key sshd would read, or options sshd would reject.
    """
    options: list[tuple[str, str | None]] = []
    key = _import_key(line)
    rest = line
    if key is None:
        options, rest = split_options(line)
        key = _import_key(rest)
        if key is None:
            raise OptionError("no public key after the options" if options and rest
                              else "not a public key line")
    refused = None
    expires: float | None = None
    kept = []
    for name, value in options:
        known = name in _MOOT or name in _FOR_ASYNCSSH or name in _DECIDED_HERE
        if known and (value is None) == (name in _WITH_VALUE):
            raise OptionError(f"option {name} {'needs a' if value is None else 'takes no'} "
                              "value")
        if name == "expiry-time":
            assert value is not None
            when = expiry_seconds(value)
            expires = when if expires is None else min(expires, when)
            if when <= now and refused is None:
                refused = f'key expired (expiry-time="{value}")'
        elif name == "principals":
            assert value is not None
            _check_principals(value)
        elif name == "from":
            assert value is not None
            _check_from(value)
        if name in _FOR_ASYNCSSH:
            kept.append(name if value is None else f"{name}={_quote(value)}")
        elif not known and refused is None:
            refused = f"option {name} cannot be enforced by the relay"
    kept.append(f'{LINE_OPTION}="{lineno}"')
    text = f"{','.join(kept)} {_key_text(key)}"
    try:
        asyncssh.import_authorized_keys(text)  # what asyncssh will be handed must parse
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise OptionError(str(exc)) from None
    return Entry(lineno, key, tuple(options), ("cert-authority", None) in options, refused,
                 _forwarding_refused(options, where), text, expires)


def parse_authorized_keys(data: bytes, path: Path, *, now: float | None = None,
                          warn: Callable[[str, dict[str, object]], None] | None = None,
                          ) -> AuthorizedKeys:
    """The entries of authorized_keys ``data`` (read from ``path``).

    A line sshd would not read is skipped; a line that holds an option the relay cannot
    enforce, or an expired key, is kept but lets nobody in. ``warn(event, fields)`` hears of
    each, once per call.
    """
    now = time.time() if now is None else now
    result = AuthorizedKeys(path)
    lines = [raw.decode("utf-8", errors="replace").strip() for raw in data.split(b"\n")]
    block_end = 0
    for lineno, line in enumerate(lines, 1):
        if lineno <= block_end or not line or line.startswith("#"):
            continue
        block = _key_block(lines, lineno)
        if block is not None:
            block_end = block.last
            result.blocks.append(block)
            if warn is not None:
                warn("authorized_keys_block_skipped", {"path": str(path), "line": block.first,
                                                       "reason": block.reason(path)})
            continue
        where = f"{path} line {lineno}"
        try:
            entry = _entry(lineno, line, where, now)
        except OptionError as exc:
            if warn is not None:
                warn("authorized_keys_line_skipped",
                     {"path": str(path), "line": lineno, "reason": str(exc)})
            continue
        if entry.refused is not None and warn is not None:
            warn("authorized_keys_line_refused",
                 {"path": str(path), "line": lineno, "reason": entry.refused})
        result.entries.append(entry)
    return result


def _key_block(lines: Sequence[str], first: int) -> KeyBlock | None:
    """The PEM or RFC 4716 block that starts at line ``first`` (1-based), if one does: a BEGIN
    line, then only base64, header or blank lines, then the END line of the same label."""
    begin = _BLOCK_BEGIN.fullmatch(lines[first - 1])
    if begin is None:
        return None
    label = begin.group(1)
    end = re.compile(rf"-{{4,5}} ?END {re.escape(label)} ?-{{4,5}}")
    continued = False
    for index in range(first, len(lines)):
        line = lines[index]
        if end.fullmatch(line):
            text = "\n".join(lines[first - 1:index + 1]) + "\n"
            key = None
            if "PRIVATE" not in label:
                try:
                    key = asyncssh.import_public_key(text)
                except (asyncssh.KeyImportError, ValueError):
                    key = None
            return KeyBlock(first, index + 1, lines[first - 1], key)
        if not continued and line and not _BLOCK_BODY.fullmatch(line):
            return None  # not a block: its lines are read one by one, as sshd reads them
        continued = line.endswith("\\")
    return None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
    except OSError as exc:
        raise KeyFileError(f"cannot read authorized keys {path}: {exc.strerror}") from None


def read_authorized_keys(path: Path, *, now: float | None = None,
                         warn: Callable[[str, dict[str, object]], None] | None = None,
                         ) -> AuthorizedKeys:
    """:func:`parse_authorized_keys` of the file at ``path``; a missing file holds none.

    Raises:
        KeyFileError: the file exists but cannot be read.
    """
    return parse_authorized_keys(_read(path), path, now=now, warn=warn)


class AuthorizedKeysReader:
    """Reads one authorized_keys file for every login, parsing it again only when its bytes
    changed or a line's expiry-time passed (a parse costs about 0.3 ms a line, reading an
    unchanged file a few microseconds)."""

    def __init__(self, path: Path,
                 warn: Callable[[str, dict[str, object]], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.warn = warn
        self.clock = clock
        self._data: bytes | None = None
        self._last = AuthorizedKeys(path)

    def read(self) -> AuthorizedKeys:
        """The file as it reads now.

        Raises:
            KeyFileError: the file exists but cannot be read.
        """
        data = _read(self.path)
        now = self.clock()
        if data != self._data or now >= self._last.valid_until:
            self._last = parse_authorized_keys(data, self.path, now=now, warn=self.warn)
            self._data = data
        return self._last
