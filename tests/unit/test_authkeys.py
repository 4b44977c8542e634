"""authorized_keys parsing with sshd's rules: options, expiry, refusals and bad bytes."""

from __future__ import annotations

import time
from pathlib import Path

import asyncssh
import pytest

from container_desktop_relay.ssh.authkeys import (
    OptionError,
    expiry_seconds,
    parse_authorized_keys,
    split_options,
)

PATH = Path("/home/u/.ssh/authorized_keys")


@pytest.fixture(scope="module")
def key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519").convert_to_public()


def _line(key: asyncssh.SSHKey, options: str = "", comment: str = "me") -> bytes:
    text = key.export_public_key("openssh").decode().split()[:2]
    return (f"{options} " if options else "").encode() + " ".join(text).encode() \
        + f" {comment}\n".encode()


def _parse(data: bytes, now: float | None = None) -> tuple[list, list]:
    warned: list[tuple[str, dict[str, object]]] = []
    ak = parse_authorized_keys(data, PATH, now=now, warn=lambda e, f: warned.append((e, f)))
    return ak.entries, warned


@pytest.mark.parametrize(("text", "options", "rest"), [
    ('command="/usr/bin/env ssh-add -l",no-pty ssh-rsa AAAA c',
     [("command", "/usr/bin/env ssh-add -l"), ("no-pty", None)], "ssh-rsa AAAA c"),
    ('command="echo \\"a, b\\"" ssh-ed25519 AAAA', [("command", 'echo "a, b"')],
     "ssh-ed25519 AAAA"),
    ('command="a\\b" k v', [("command", "a\\b")], "k v"),  # only \" is an escape, as in sshd
    ("No-Port-Forwarding,RESTRICT\tk v", [("no-port-forwarding", None), ("restrict", None)],
     "k v"),
])
def test_split_options_as_sshd(text: str, options: list, rest: str) -> None:
    """Quoted values keep spaces, commas and \\" ; names are case-insensitive."""
    assert split_options(text) == (options, rest)


@pytest.mark.parametrize(("text", "why"), [
    ('command="unbalanced ssh-rsa AAAA', "unbalanced quote"),
    ("from=10.0.0.1 ssh-rsa AAAA", "must be in double quotes"),
    (",no-pty ssh-rsa AAAA", "empty option name"),
    ('no-pty"x" ssh-rsa AAAA', "unexpected quote"),
])
def test_split_options_refuses_what_sshd_refuses(text: str, why: str) -> None:
    """An options field sshd would reject raises, saying why."""
    with pytest.raises(OptionError, match=why):
        split_options(text)


def test_expiry_time_forms() -> None:
    """YYYYMMDD[HHMM[SS]] in local time, or UTC with Z; anything else is refused."""
    assert expiry_seconds("20200101Z") == 1577836800
    assert expiry_seconds("202001010130Z") == 1577836800 + 5400
    assert expiry_seconds("20200101013005Z") == 1577836800 + 5405
    assert expiry_seconds("20200101") == time.mktime((2020, 1, 1, 0, 0, 0, 0, 0, -1))
    for bad in ("2020", "2020010", "20201301", "20200101T", "yesterday"):
        with pytest.raises(OptionError):
            expiry_seconds(bad)


def test_each_line_decided_and_reported_once(key: asyncssh.SSHKey) -> None:
    """Enforceable options pass to asyncssh, expired lines and unenforceable options refuse
    logins, unreadable lines are skipped; every report names the line."""
    data = b"".join([
        b"# Jos\xe9's keys\n",
        _line(key, 'from="10.9.9.9",command="x y"'),
        _line(key, 'expiry-time="20200101"'),
        _line(key, "verify-required"),
        _line(key, 'frobnicate="1"'),
        _line(key, 'principals="a*"'),
        b"not a key at all\n",
        _line(key, "restrict,port-forwarding"),
        _line(key, 'restrict,permitopen="h:1"'),
        _line(key, "no-port-forwarding"),
        _line(key, 'cert-authority,principals="ci,ops"'),
        _line(key, 'permitopen="h:1"'),
    ])
    entries, warned = _parse(data, now=1700000000)
    by_line = {e.lineno: e for e in entries}
    assert sorted(by_line) == [2, 3, 4, 5, 8, 9, 10, 11, 12]
    assert by_line[2].refused is None and by_line[2].forwarding_refused is None
    assert by_line[2].text.startswith('from="10.9.9.9",x-container-desktop-relay-line="2" ')
    assert by_line[3].refused == 'key expired (expiry-time="20200101")'
    assert by_line[4].refused == "option verify-required cannot be enforced by the relay"
    assert by_line[5].refused == "option frobnicate cannot be enforced by the relay"
    assert by_line[8].forwarding_refused is None
    assert by_line[9].forwarding_refused == f"port forwarding is disabled by restrict ({PATH} " \
                                            "line 9)"
    assert by_line[10].forwarding_refused == f"port forwarding is disabled by " \
                                             f"no-port-forwarding ({PATH} line 10)"
    assert by_line[11].cert_authority and by_line[11].forwarding_refused is None
    assert by_line[12].forwarding_refused == "permitopen limits forwarding to the TCP " \
        f"destinations it lists, never a Unix socket ({PATH} line 12)"
    assert [(event, f["line"]) for event, f in warned] == [
        ("authorized_keys_line_refused", 3), ("authorized_keys_line_refused", 4),
        ("authorized_keys_line_refused", 5), ("authorized_keys_line_skipped", 6),
        ("authorized_keys_line_skipped", 7)]


def test_asyncssh_matches_from_and_skips_refused_lines(key: asyncssh.SSHKey) -> None:
    """What asyncssh is handed: a from= line matches only its hosts; a refused line never."""
    entries, _ = _parse(_line(key, 'from="10.9.9.*,!10.9.9.8"') + _line(key, "verify-required"))
    from container_desktop_relay.ssh.authkeys import AuthorizedKeys

    allowed = AuthorizedKeys(PATH, entries).for_asyncssh()
    assert allowed.validate(key, "", "10.9.9.9") is not None
    assert allowed.validate(key, "", "10.9.9.8") is None
    assert allowed.validate(key, "", "127.0.0.1") is None
    why = AuthorizedKeys(PATH, entries).why_refused(key, "127.0.0.1")
    assert f"{PATH} line 1: correct key but 127.0.0.1 is not a permitted host" in why
    assert f"{PATH} line 2: option verify-required cannot be enforced" in why


def test_non_utf8_bytes_change_nothing(key: asyncssh.SSHKey) -> None:
    """A Latin-1 comment or option value neither breaks the file nor the line it is on."""
    data = (b"# Jos\xe9\n" + _line(key, comment="x")[:-3] + b" Jos\xe9 laptop\n"
            + b'command="echo \xe9" ' + _line(key)[:-1] + b"\xff\xfe\n")
    entries, warned = _parse(data)
    assert [(e.lineno, e.refused) for e in entries] == [(2, None), (3, None)]
    assert warned == []


def test_reader_parses_again_only_on_change_or_expiry(key: asyncssh.SSHKey,
                                                      tmp_path: Path) -> None:
    """An unchanged file is not parsed again; new bytes or a passed expiry-time are."""
    import types

    from container_desktop_relay.ssh.authkeys import AuthorizedKeysReader

    clock = types.SimpleNamespace(now=expiry_seconds("20300101Z") - 10)
    path = tmp_path / "authorized_keys"
    path.write_bytes(_line(key, 'expiry-time="20300101Z"'))
    reader = AuthorizedKeysReader(path, clock=lambda: clock.now)
    first = reader.read()
    assert first.entries[0].refused is None and reader.read() is first
    assert first.for_asyncssh() is first.for_asyncssh()
    clock.now += 10  # the expiry-time is reached: the line now lets nobody in
    expired = reader.read()
    assert expired is not first and expired.entries[0].refused is not None
    path.write_bytes(_line(key))
    assert reader.read().entries[0].refused is None


@pytest.fixture(scope="module")
def rsa_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-rsa", key_size=2048)


def _pem(key: asyncssh.SSHKey) -> bytes:
    """The public half as keygen writes id_rsa.pub: PEM "RSA PUBLIC KEY"."""
    from container_desktop_relay.ssh.keys import public_pem

    return public_pem(key)


def test_pem_block_is_skipped_with_one_warning_naming_the_fix(rsa_key: asyncssh.SSHKey,
                                                             key: asyncssh.SSHKey) -> None:
    """``cat id_rsa.pub >> authorized_keys``: the block lets nobody in (as under sshd), one
    warning names file, lines and the OpenSSH line to use; the lines around it still work."""
    pem = _pem(rsa_key)
    assert pem.startswith(b"-----BEGIN RSA PUBLIC KEY-----\n")
    data = _line(key, comment="before") + pem + _line(key, "restrict", comment="after")
    warned: list[tuple[str, dict[str, object]]] = []
    ak = parse_authorized_keys(data, PATH, warn=lambda e, f: warned.append((e, f)))
    last = 1 + pem.count(b"\n")
    assert [e.lineno for e in ak.entries] == [1, last + 1]
    assert [(b.first, b.last, b.begin) for b in ak.blocks] == [
        (2, last, "-----BEGIN RSA PUBLIC KEY-----")]
    openssh = " ".join(rsa_key.export_public_key("openssh").decode().split()[:2])
    assert warned == [("authorized_keys_block_skipped", {
        "path": str(PATH), "line": 2,
        "reason": f"{PATH} lines 2-{last} hold a key block (-----BEGIN RSA PUBLIC KEY-----), "
                  "which sshd does not read as a key and neither does the relay: replace "
                  f"those lines with this one line: {openssh}"})]
    assert ak.for_asyncssh().validate(rsa_key.convert_to_public(), "u", "127.0.0.1") is None
    why = ak.why_refused(rsa_key.convert_to_public(), "127.0.0.1")
    assert why.startswith(f"{PATH} lines 2-{last} hold a key block") and openssh in why


@pytest.mark.parametrize("fmt", ["pkcs8-pem", "rfc4716"])
def test_other_key_blocks_are_named_too(fmt: str, rsa_key: asyncssh.SSHKey) -> None:
    """A "PUBLIC KEY" PEM block or an RFC 4716 block (headers and all) gets the same warning."""
    block = rsa_key.export_public_key(fmt)
    entries, warned = _parse(b"# keys\n" + block)
    assert entries == [] and [(e, f["line"]) for e, f in warned] == [
        ("authorized_keys_block_skipped", 2)]
    assert "replace those lines with this one line: ssh-rsa AAAA" in str(warned[0][1]["reason"])


def test_private_key_block_is_named_as_such(rsa_key: asyncssh.SSHKey) -> None:
    """A pasted private key is one warning saying so (and nothing of it is read)."""
    block = rsa_key.export_private_key("pkcs1-pem")
    entries, warned = _parse(block)
    assert entries == [] and len(warned) == 1
    assert "a private key, which has no place in authorized_keys" in str(warned[0][1]["reason"])


def test_a_broken_block_hides_no_key_line(key: asyncssh.SSHKey, rsa_key: asyncssh.SSHKey
                                          ) -> None:
    """A BEGIN line without its END, or with a key line before the END, is no block: each
    line is read as sshd reads it, so the key line keeps working."""
    body = _pem(rsa_key).splitlines(keepends=True)
    for data in (body[0] + body[1] + _line(key) + body[-1], body[0] + body[1] + _line(key)):
        entries, warned = _parse(data)
        assert [e.lineno for e in entries] == [3]
        assert {event for event, _ in warned} == {"authorized_keys_line_skipped"}
