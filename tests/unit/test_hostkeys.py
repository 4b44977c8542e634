"""Host-key policy: pinned, changed, revoked, hashed and first-use keys; never loses lines."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

import asyncssh
import pytest

from container_desktop_relay.errors import HostKeyMismatch, HostKeyUnknown
from container_desktop_relay.ssh.hostkeys import (
    HostKeyPolicy,
    host_key_algs,
    host_label,
    read_known_hosts,
)
from helpers import log_records


def _key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519").convert_to_public()


def _data(keys: list[asyncssh.SSHKey]) -> list[bytes]:
    return [k.public_data for k in keys]


def _line(label: str, key: asyncssh.SSHKey) -> str:
    return f"{label} {key.export_public_key('openssh').decode().strip()}\n"


def _hashed(name: str) -> str:
    salt = os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def test_host_label() -> None:
    """Port 22 is bare, any other port is bracketed."""
    assert host_label("h", 22) == "h"
    assert host_label("h", 2222) == "[h]:2222"


def test_first_use_is_recorded_and_keeps_existing_lines(tmp_path: Path) -> None:
    """An unknown host is trusted once, appended, and every earlier byte is kept."""
    kh = tmp_path / "known_hosts"
    other = _key()
    original = "# my hosts\n" + _line("example.org", other).rstrip("\n")  # no final newline
    kh.write_text(original)
    kh.chmod(0o640)
    key = _key()
    policy = HostKeyPolicy(kh, secure=False)
    assert policy.trusted_keys("localhost", 20022) == []
    assert policy.check("localhost", "127.0.0.1", 20022, key) is True
    policy.commit()
    text = kh.read_text()
    assert text.startswith(original + "\n")
    algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
    assert text == original + "\n" + f"[localhost]:20022 {algorithm} {blob}\n"
    assert (kh.stat().st_mode & 0o777) == 0o640
    assert _data(policy.trusted_keys("localhost", 20022)) == _data([key])
    policy.commit()  # nothing pending: nothing written twice
    assert kh.read_text() == text


def test_first_use_creates_file_and_directory(tmp_path: Path) -> None:
    """A missing known_hosts (and .ssh directory, and what leads to it) is created private."""
    kh = tmp_path / "home" / "user" / ".ssh" / "known_hosts"
    policy = HostKeyPolicy(kh, secure=False)
    assert policy.check("h", "", 22, _key())
    policy.commit()
    assert (kh.stat().st_mode & 0o777) == 0o600
    assert (kh.parent.stat().st_mode & 0o777) == 0o700
    assert len(read_known_hosts(kh)) == 1


def test_changed_key_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    """A key that differs from the recorded one is refused with the file and line number."""
    kh = tmp_path / "known_hosts"
    kh.write_text("# comment\n\n" + _line("[localhost]:20022", _key()))
    policy = HostKeyPolicy(kh, secure=False)
    assert policy.check("localhost", "127.0.0.1", 20022, _key()) is False
    assert isinstance(policy.refusal, HostKeyMismatch)
    assert f"{kh} line 3" in str(policy.refusal)
    assert policy.pending_record is None


def test_match_by_address_wildcard_and_hash(tmp_path: Path) -> None:
    """Entries match by IP address, wildcard pattern, or hashed name."""
    kh = tmp_path / "known_hosts"
    by_addr, by_glob, by_hash = _key(), _key(), _key()
    kh.write_text(_line("[127.0.0.1]:2000", by_addr) + _line("[*.lan]:2001", by_glob)
                  + _line(_hashed("[box]:2002"), by_hash))
    policy = HostKeyPolicy(kh, secure=True)
    assert _data([e.key for e in policy.entries_for("localhost", 2000, "127.0.0.1")]) == \
        _data([by_addr])
    assert _data(policy.trusted_keys("nas.lan", 2001)) == _data([by_glob])
    assert _data(policy.trusted_keys("box", 2002)) == _data([by_hash])
    assert policy.trusted_keys("box", 2003) == []


def test_negated_pattern_excludes(tmp_path: Path) -> None:
    """A negated pattern wins over a positive one on the same line."""
    kh = tmp_path / "known_hosts"
    kh.write_text(_line("*,!bad.example", _key()))
    policy = HostKeyPolicy(kh, secure=True)
    assert policy.trusted_keys("bad.example", 22) == []
    assert len(policy.trusted_keys("good.example", 22)) == 1


def test_revoked_key_is_refused(tmp_path: Path) -> None:
    """A key marked @revoked is never accepted, even on first use."""
    kh = tmp_path / "known_hosts"
    key = _key()
    kh.write_text("@revoked " + _line("*", key))
    policy = HostKeyPolicy(kh, secure=False)
    assert policy.trusted_keys("h", 22) == []
    assert policy.check("h", "", 22, key) is False
    assert "@revoked" in str(policy.refusal)


def test_secure_refuses_unknown(tmp_path: Path) -> None:
    """With --secure-host-key an unknown host is refused and nothing is written."""
    kh = tmp_path / "known_hosts"
    policy = HostKeyPolicy(kh, secure=True)
    policy.commit()  # nothing checked yet: nothing to record
    assert policy.check("h", "", 22, _key()) is False
    assert isinstance(policy.refusal, HostKeyUnknown)
    policy.commit()
    assert not kh.exists()


def test_expected_key_ignores_known_hosts(tmp_path: Path) -> None:
    """A spawned server must present exactly the identity key; known_hosts is not consulted."""
    kh = tmp_path / "known_hosts"
    identity = asyncssh.generate_private_key("ssh-ed25519")
    stranger = _key()
    kh.write_text(_line("[localhost]:20022", stranger))
    policy = HostKeyPolicy(kh, secure=False, expected=identity, expected_source="--identity-path x")
    assert _data(policy.trusted_keys("localhost", 20022)) == _data([identity])
    assert policy.trusted_keys("localhost", 20022) == [identity.convert_to_public()]
    assert policy.check("localhost", "", 20022, stranger) is False
    assert str(policy.refusal).endswith(
        f"must present its identity key ssh-ed25519 {identity.get_fingerprint()} "
        "(--identity-path x)")
    policy.commit()
    assert kh.read_text() == _line("[localhost]:20022", stranger)


def test_unparsable_lines_are_skipped_with_a_warning(tmp_path: Path) -> None:
    """Garbage, a bad key and an unknown marker are skipped, each reported with its line;
    @cert-authority lines are read as CA entries, not pins; non-UTF-8 bytes break nothing."""
    kh = tmp_path / "known_hosts"
    key = _key()
    kh.write_bytes(b"garbage\nh ssh-rsa notbase64\n@cert-authority * "
                   + key.export_public_key("openssh") + b"@bogus " + _line("h", key).encode()
                   + b"# Jos\xe9\n" + _line("h", key).encode())
    warned: list[tuple[str, dict[str, object]]] = []
    entries = read_known_hosts(kh, lambda event, fields: warned.append((event, fields)))
    assert [(e.line, e.cert_authority) for e in entries] == [(3, True), (6, False)]
    assert [f["line"] for _, f in warned] == [1, 2, 4]
    assert "unknown marker @bogus" in str(warned[2][1]["reason"])
    policy = HostKeyPolicy(kh, secure=True)
    assert _data(policy.trusted_keys("h", 22)) == [key.public_data]


def test_revoked_key_is_not_trusted_even_when_pinned(tmp_path: Path) -> None:
    """A pinned key revoked by another line (plain, hashed or wildcard) is not handed to
    asyncssh as trusted, and check() refuses it naming the @revoked line."""
    key = _key()
    for revoked_for in ("*", "[h]:2222", _hashed("[h]:2222")):
        kh = tmp_path / "known_hosts"
        kh.write_text(_line(_hashed("[h]:2222"), key) + "@revoked " + _line(revoked_for, key))
        policy = HostKeyPolicy(kh, secure=False)
        assert policy.trusted_keys("h", 2222) == []
        assert policy.check("h", "", 2222, key) is False
        assert f"@revoked in {kh} line 2" in str(policy.refusal)
        assert policy.pending_record is None


def test_revoked_for_another_host_leaves_this_pin_alone(tmp_path: Path) -> None:
    """@revoked for other.example does not refuse the key pinned for h."""
    key = _key()
    kh = tmp_path / "known_hosts"
    kh.write_text(_line("h", key) + "@revoked " + _line("other.example", key))
    policy = HostKeyPolicy(kh, secure=True)
    assert policy.check("h", "", 22, key) is True


def test_cert_authority_keys_for_the_host(tmp_path: Path) -> None:
    """@cert-authority keys naming the host are offered to asyncssh as CAs; a revoked CA is
    not, and its refusal names the @revoked line."""
    ca, other = _key(), _key()
    kh = tmp_path / "known_hosts"
    kh.write_text("@cert-authority " + _line("*.example", ca)
                  + "@cert-authority " + _line("elsewhere", other))
    policy = HostKeyPolicy(kh, secure=True)
    cas, revoked = policy.host_cas("h.example", 22)
    assert (_data(cas), revoked) == ([ca.public_data], [])
    assert policy.expects_certificate("h.example", 22)
    assert policy.trusted_keys("h.example", 22) == []
    policy.refuse_ca("h.example", 22, other)
    assert "no @cert-authority line" in str(policy.refusal)
    with kh.open("a") as fh:
        fh.write("@revoked " + _line("*", ca))
    assert policy.host_cas("h.example", 22)[0] == []
    assert policy.expects_certificate("h.example", 22)  # so the refusal can say why
    policy.refuse_ca("h.example", 22, ca)
    assert f"@revoked in {kh} line 3" in str(policy.refusal)


def test_pinned_key_presented_again_is_accepted(tmp_path: Path) -> None:
    """The key a first handshake recorded is accepted when asked again (re-keying)."""
    key = asyncssh.generate_private_key("ssh-ed25519").convert_to_public()
    policy = HostKeyPolicy(tmp_path / "known_hosts", secure=False)
    assert policy.check("127.0.0.1", "127.0.0.1", 2222, key)
    policy.commit()
    assert policy.check("127.0.0.1", "127.0.0.1", 2222, key)
    other = asyncssh.generate_private_key("ssh-ed25519").convert_to_public()
    assert not policy.check("127.0.0.1", "127.0.0.1", 2222, other)


def test_key_pinned_under_address_is_accepted(tmp_path: Path) -> None:
    """A key recorded for the server's IP address is accepted when connecting by name."""
    kh = tmp_path / "known_hosts"
    key = _key()
    kh.write_text(_line("[127.0.0.1]:2222", key))
    policy = HostKeyPolicy(kh, secure=True)
    assert policy.trusted_keys("localhost", 2222) == []
    assert policy.check("localhost", "127.0.0.1", 2222, key) is True
    assert policy.refusal is None and policy.pending_record is None
    assert policy.check("localhost", "127.0.0.1", 2222, _key()) is False


def test_unwritable_known_hosts_commit_fails_clearly(tmp_path: Path) -> None:
    """Recording into a known_hosts that cannot be written raises a clear KeyFileError and
    leaves what is in the way untouched."""
    from container_desktop_relay.errors import KeyFileError

    blocker = tmp_path / "file"
    blocker.write_bytes(b"keep")
    policy = HostKeyPolicy(blocker / "known_hosts", secure=False)
    key = asyncssh.generate_private_key("ssh-ed25519").convert_to_public()
    policy.pending_record = ("[127.0.0.1]:2222", key)
    with pytest.raises(KeyFileError, match=r"^cannot record host key of \[127\.0\.0\.1\]:2222 in "
                                           rf"{blocker / 'known_hosts'}: Not a directory$"):
        policy.commit()
    assert blocker.read_bytes() == b"keep"


def test_host_key_algorithms_offer_the_pinned_type_first_then_every_default() -> None:
    """The pinned keys' algorithms come first (so the kex picks the pinned type), then every
    other default one once (so a changed key type is reported as a changed key); with a
    trusted CA, certificate algorithms lead."""
    from asyncssh.public_key import get_default_certificate_algs, get_default_public_key_algs

    pinned = _key()
    defaults = [a.decode() for a in get_default_public_key_algs()]
    certs = [a.decode() for a in get_default_certificate_algs()]
    assert host_key_algs([]) == defaults
    offered = host_key_algs([pinned, pinned])
    assert offered[0] == "ssh-ed25519" and defaults[0] != "ssh-ed25519"
    assert sorted(offered) == sorted(defaults) and len(set(offered)) == len(offered)
    with_ca = host_key_algs([pinned], certificates=True)
    assert with_ca[:len(certs)] == certs and with_ca[len(certs)] == "ssh-ed25519"
    assert sorted(with_ca) == sorted(certs + defaults)


def test_ca_refusals_name_the_host_as_known_hosts_writes_it(tmp_path: Path) -> None:
    """On a non-default port, the refusal of a certificate names the host as ``[host]:port``
    (the @cert-authority line to add, or the @revoked line that matched it)."""
    ca, untrusted = _key(), _key()
    kh = tmp_path / "known_hosts"
    kh.write_text("@cert-authority " + _line("[h.example]:2222", ca)
                  + "@revoked " + _line("[h.example]:2222", untrusted))
    policy = HostKeyPolicy(kh, secure=True)
    policy.refuse_ca("h.example", 2222, untrusted)
    assert str(policy.refusal).startswith("host certificate of [h.example]:2222 is signed by CA ")
    assert str(policy.refusal).endswith(f"marked @revoked in {kh} line 2")
    policy.refuse_ca("h.example", 2222, _key())
    assert str(policy.refusal).startswith("host certificate of [h.example]:2222 is signed by CA ")
    assert "add '@cert-authority [h.example]:2222 <CA public key>'" in str(policy.refusal)
    assert str(policy.revoked_refusal("h.example", 2222, "certificate key revoked")) == (
        f"host key of [h.example]:2222 was refused: certificate key revoked (@revoked in {kh} "
        "line 2)")
    with kh.open("a") as fh:
        fh.write("@revoked " + _line("[*.example]:2222", _key()))
    assert str(policy.revoked_refusal("h.example", 2222, "revoked")).endswith(
        f"(@revoked in {kh} line 2, 3)")


def test_revoked_keys_go_to_the_certificate_check_only_with_a_ca(tmp_path: Path) -> None:
    """With a CA for the host, its @revoked keys are handed to the certificate check; without
    one there is no certificate to check and the revoked key reaches check() instead."""
    ca, revoked = _key(), _key()
    kh = tmp_path / "known_hosts"
    kh.write_text("@revoked " + _line("*", revoked))
    policy = HostKeyPolicy(kh, secure=True)
    assert policy.host_cas("h", 22) == ([], [])
    kh.write_text("@cert-authority " + _line("*", ca) + "@revoked " + _line("*", revoked))
    cas, gone = policy.host_cas("h", 22)
    assert (_data(cas), _data(gone)) == ([ca.public_data], [revoked.public_data])


def test_spawned_server_is_never_asked_for_a_certificate(tmp_path: Path) -> None:
    """With the identity key expected, known_hosts' CA lines are not consulted at all."""
    kh = tmp_path / "known_hosts"
    kh.write_text("@cert-authority " + _line("*", _key()))
    policy = HostKeyPolicy(kh, secure=True, expected=asyncssh.generate_private_key("ssh-ed25519"))
    assert policy.expects_certificate("h", 22) is False
    assert policy.host_cas("h", 22) == ([], [])


def test_only_well_formed_version_1_hashes_match(tmp_path: Path) -> None:
    """A hashed name is read only as ``|1|salt|hash``: another version, too few fields or
    a salt that is not base64 matches nothing (and breaks nothing)."""
    key = _key()
    salt = os.urandom(20)
    digest = hmac.new(salt, b"h", hashlib.sha1).digest()
    other_version = f"|2|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    kh = tmp_path / "known_hosts"
    kh.write_text(_line(other_version, key) + _line("|1|" + base64.b64encode(salt).decode(), key)
                  + _line("|1|abc|abc", key))  # not base64
    assert HostKeyPolicy(kh, secure=True).trusted_keys("h", 22) == []
    kh.write_text(_line(other_version.replace("|2|", "|1|"), key))
    assert len(HostKeyPolicy(kh, secure=True).trusted_keys("h", 22)) == 1


def test_each_skipped_line_is_warned_about_once(tmp_path: Path) -> None:
    """known_hosts is re-read at every (re)connection; each bad line is logged once, not at
    every read."""
    import logging

    with log_records("container_desktop_relay.ssh.hostkeys", logging.WARNING) as records:
        kh = tmp_path / "known_hosts"
        kh.write_text("garbage\n" + _line("h", _key()) + "more garbage\n")
        policy = HostKeyPolicy(kh, secure=True)
        for _ in range(3):
            assert len(policy.trusted_keys("h", 22)) == 1
    skipped = [r for r in records if r.getMessage() == "known_hosts_line_skipped"]
    assert [(getattr(r, "path", None), getattr(r, "line", None)) for r in skipped] == [
        (str(kh), 1), (str(kh), 3)]
    assert getattr(skipped[0], "reason", None) == (
        "expected: [marker] host-patterns keytype base64 [comment]")


def test_unreadable_known_hosts_is_named_with_the_reason(tmp_path: Path) -> None:
    """A known_hosts that exists but cannot be read stops the check, naming file and cause."""
    from container_desktop_relay.errors import KeyFileError

    kh = tmp_path / "known_hosts"
    kh.mkdir()
    with pytest.raises(KeyFileError, match=rf"^cannot read known hosts {kh}: Is a directory$"):
        read_known_hosts(kh)


def test_wildcards_and_case(tmp_path: Path) -> None:
    """``?`` stands for exactly one character, ``*`` for any run; names match whatever their
    case (as ssh lowercases them); an empty pattern (a stray comma) names no host."""
    kh = tmp_path / "known_hosts"
    one, other = _key(), _key()
    kh.write_text(_line("h?.example", one) + _line("*.LAN,", other))
    policy = HostKeyPolicy(kh, secure=True)
    assert _data(policy.trusted_keys("h1.example", 22)) == _data([one])
    assert policy.trusted_keys("h12.example", 22) == []
    assert policy.trusted_keys("hx-example", 22) == []
    assert _data(policy.trusted_keys("nas.lan", 22)) == _data([other])
    assert _data(policy.trusted_keys("NAS.Lan", 22)) == _data([other])
    assert policy.trusted_keys("h", 22) == []


def test_unknown_key_of_a_host_with_only_a_ca_line(tmp_path: Path) -> None:
    """A @cert-authority line pins no plain key: a host presenting a plain key is unknown
    (refused under --secure-host-key, with the fix) rather than 'changed'."""
    kh = tmp_path / "known_hosts"
    kh.write_text("@cert-authority " + _line("h", _key()))
    key = _key()
    policy = HostKeyPolicy(kh, secure=True)
    assert policy.check("h", "", 22, key) is False
    assert isinstance(policy.refusal, HostKeyUnknown)
    assert str(policy.refusal) == (
        f"host key ssh-ed25519 {key.get_fingerprint('sha256')} of h is not in {kh} and "
        "--secure-host-key is on; add it there (ssh-keyscan) or turn strict checking off")
    tofu = HostKeyPolicy(kh, secure=False)
    assert tofu.check("h", "", 22, key) is True and tofu.pending_record == ("h", key)


def test_changed_key_refusal_says_how_to_accept_a_new_key(tmp_path: Path) -> None:
    """The refusal of a changed key names both keys and the line to delete."""
    kh = tmp_path / "known_hosts"
    old, new = _key(), _key()
    kh.write_text(_line("h", old))
    policy = HostKeyPolicy(kh, secure=False)
    assert policy.check("h", "", 22, new) is False
    assert str(policy.refusal) == (
        f"host key of h changed: the server presented ssh-ed25519 {new.get_fingerprint()} but "
        f"{kh} line 1 records ssh-ed25519 {old.get_fingerprint()}; if the server was re-keyed "
        "on purpose, delete that line")
