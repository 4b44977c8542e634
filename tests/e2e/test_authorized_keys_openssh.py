"""authorized_keys options: the relay's server and a real sshd read the same file alike."""

from __future__ import annotations

import getpass
import socket
import subprocess
from pathlib import Path

import pytest

from helpers import (
    EchoTarget,
    Keys,
    Proc,
    RelayServer,
    Sshd,
    make_ed25519,
    need_tool,
    run_relay,
    stopping,
    unix_connect,
    wait_for,
)

pytestmark = pytest.mark.e2e

USER = getpass.getuser()
OPEN, NO_CHANNEL, NO_LOGIN = "channel opens", "channel refused", "login refused"


def forward_outcome(port: int, identity: Path, target: Path, tmp: Path, name: str) -> str:
    """Log in with ``identity`` by ``ssh -N -L`` and push a few bytes through to ``target``."""
    ssh = need_tool("ssh")
    local = tmp / f"{name}.sock"
    proc = Proc([ssh, "-N", "-v", "-p", str(port), "-i", str(identity),
                 "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                 "-o", f"UserKnownHostsFile={tmp}/known_hosts", "-o", "BatchMode=yes",
                 "-o", "StreamLocalBindUnlink=yes", "-L", f"{local}:{target}",
                 f"{USER}@127.0.0.1"], tmp / f"ssh-{name}.log")
    with stopping(proc):
        wait_for(lambda: "Local forwarding listening" in proc.log() or not proc.alive(), 20,
                 f"ssh {name} to log in or give up")
        if not proc.alive():
            assert "Permission denied" in proc.log(), proc.log()
            return NO_LOGIN
        got = b""
        with unix_connect(local, 20) as sock:
            try:  # a refused channel closes (or resets) the local connection
                sock.sendall(b"ping")
                sock.shutdown(socket.SHUT_WR)
                while data := sock.recv(4096):
                    got += data
            except (ConnectionResetError, BrokenPipeError):
                pass
        if got == b"ping":
            return OPEN
        wait_for(lambda: "open failed" in proc.log(), 10, "ssh to report the refusal")
        return NO_CHANNEL


@pytest.fixture
def both(keys: Keys, tmp: Path) -> tuple[RelayServer, Sshd]:
    """The relay's server and a real sshd, both reading ``keys.authorized_keys``."""
    relay = RelayServer(keys, tmp)
    try:
        sshd = Sshd(tmp, keys.authorized_keys)
    except BaseException:
        relay.stop()
        raise
    yield relay, sshd  # type: ignore[misc]
    sshd.stop()
    relay.stop()


def _line(options: str, pub: Path) -> str:
    key = " ".join(pub.read_text().split()[:2])
    return f"{options} {key} guest\n" if options else f"{key} guest\n"


CASES = [
    # (options for the guest key's line, outcome under sshd and the relay)
    ("", OPEN),
    ('from="10.9.9.9"', NO_LOGIN),
    ('from="127.0.0.*,!127.0.0.1"', NO_LOGIN),
    ('from="10.0.0.0/8,127.0.0.0/8"', OPEN),
    ('from="127.0.0.?"', OPEN),
    ('from="localhost"', NO_LOGIN),  # host names match only under UseDNS; both check the address
    ('FROM="*.example.com,127.*"', OPEN),
    ('expiry-time="20200101"', NO_LOGIN),
    ('expiry-time="29991231Z"', OPEN),
    ("restrict", NO_CHANNEL),
    ("restrict,port-forwarding", OPEN),
    ("no-port-forwarding", NO_CHANNEL),
    ('command="/usr/bin/env ssh-add -l",no-pty', OPEN),
    ('command="/usr/bin/env ssh-add -l",no-port-forwarding', NO_CHANNEL),
    ('permitopen="localhost:1"', NO_CHANNEL),
    ('permitlisten="localhost:1"', OPEN),
    ('NO-PORT-FORWARDING', NO_CHANNEL),
    ('cert-authority,principals="ci"', NO_LOGIN),
]


def test_each_option_as_sshd_enforces_it(both: tuple[RelayServer, Sshd], keys: Keys,
                                         echo: EchoTarget, tmp: Path) -> None:
    """For each option, sshd and the relay give the same outcome on the same file; the
    unrestricted identity line in that file keeps working throughout."""
    relay, sshd = both
    guest = make_ed25519(tmp / "guest")
    identity_line = keys.authorized_keys.read_text()
    got: dict[str, tuple[str, str]] = {}
    for i, (options, _) in enumerate(CASES):
        keys.authorized_keys.write_text(identity_line + _line(options, Path(f"{guest}.pub")))
        got[options] = (forward_outcome(sshd.port, guest, echo.path, tmp, f"s{i}"),
                        forward_outcome(relay.port, guest, echo.path, tmp, f"r{i}"))
    assert got == {options: (want, want) for options, want in CASES}
    refused = (tmp / f"ssh-r{[c[0] for c in CASES].index('restrict')}.log").read_text()
    assert "administratively prohibited: port forwarding is disabled by restrict" in refused
    assert forward_outcome(relay.port, keys.identity, echo.path, tmp, "identity") == OPEN
    log = relay.proc.log()
    assert "is not a permitted host" in log and 'from=\\"10.9.9.9\\"' in log
    assert 'key expired (expiry-time=\\"20200101\\")' in log
    assert "port forwarding is disabled by restrict" in log
    assert "port forwarding is disabled by no-port-forwarding" in log
    assert "permitopen limits forwarding to the TCP destinations it lists" in log
    assert "is a cert-authority key" in log


def test_certificates_from_a_cert_authority_line(both: tuple[RelayServer, Sshd], keys: Keys,
                                                 echo: EchoTarget, tmp: Path) -> None:
    """A certificate signed by a cert-authority key logs in when it names a listed principal
    (or, without principals=, the user), as under sshd; the CA's own key never does."""
    relay, sshd = both
    keygen = need_tool("ssh-keygen")
    ca, guest = make_ed25519(tmp / "ca"), make_ed25519(tmp / "guest")
    subprocess.run([keygen, "-q", "-s", str(ca), "-I", "guest", "-n", f"ci,{USER}",
                    f"{guest}.pub"], check=True, capture_output=True)
    assert Path(f"{guest}-cert.pub").exists()
    identity_line = keys.authorized_keys.read_text()
    cases = [('cert-authority,principals="ci"', OPEN),
             ('cert-authority,principals="deploy"', NO_LOGIN),
             ("cert-authority", OPEN),
             ('cert-authority,from="10.9.9.9"', NO_LOGIN),
             ('cert-authority,no-port-forwarding', NO_CHANNEL),
             ("", NO_LOGIN)]  # the CA as a plain key: a certificate is not that key
    got = {}
    for i, (options, _) in enumerate(cases):
        keys.authorized_keys.write_text(identity_line + _line(options, Path(f"{ca}.pub")))
        got[options] = (forward_outcome(sshd.port, guest, echo.path, tmp, f"s{i}"),
                        forward_outcome(relay.port, guest, echo.path, tmp, f"r{i}"))
    assert got == {options: (want, want) for options, want in cases}
    assert '"ssh_certificate_rejected"' in relay.proc.log()


def test_latin1_comment_and_bad_lines_change_nothing(keys: Keys, echo: EchoTarget,
                                                     tmp: Path) -> None:
    """With a Latin-1 comment, a line sshd cannot read and an option the relay cannot enforce
    in the file, the server starts and the other keys work; each bad line is reported once,
    naming file and line."""
    guest = make_ed25519(tmp / "guest")
    other = make_ed25519(tmp / "other")
    with keys.authorized_keys.open("ab") as fh:
        fh.write(b"# Jos\xe9's laptop\n")
        fh.write(_line("", Path(f"{guest}.pub")).replace("guest", "Jos\xe9").encode("latin-1"))
        fh.write(b"garbage \xff\xfe line\n")
        fh.write(_line("verify-required", Path(f"{other}.pub")).encode())
    relay = RelayServer(keys, tmp)
    with stopping(relay):
        _check_latin1(relay, keys, echo, tmp, guest, other)


def _check_latin1(relay: RelayServer, keys: Keys, echo: EchoTarget, tmp: Path, guest: Path,
                  other: Path) -> None:
    for i in range(2):  # the file is re-read per connection; warnings are not repeated
        assert forward_outcome(relay.port, keys.identity, echo.path, tmp, f"i{i}") == OPEN
    assert forward_outcome(relay.port, guest, echo.path, tmp, "guest") == OPEN
    assert forward_outcome(relay.port, other, echo.path, tmp, "other") == NO_LOGIN
    log = relay.proc.log()
    path = str(keys.authorized_keys)
    assert log.count('"authorized_keys_line_skipped"') == 1
    assert f'"path": "{path}", "line": 4' in log
    assert log.count('"authorized_keys_line_refused"') == 1
    assert "option verify-required cannot be enforced by the relay" in log
    assert "Traceback" not in log


def test_cat_id_rsa_pub_into_authorized_keys(both: tuple[RelayServer, Sshd], keys: Keys,
                                             echo: EchoTarget, tmp: Path) -> None:
    """A client's key made by keygen on "another machine": its PEM id_rsa.pub appended with
    cat lets nobody in under sshd or the relay, and the relay says why once, naming file, lines
    and the OpenSSH line; that line (keygen --print-public), or ssh-keygen's conversion of the
    PEM file, then works under both."""
    relay, sshd = both
    keygen = need_tool("ssh-keygen")
    client = Keys(tmp / "client")  # a second identity, as keygen makes it elsewhere
    pub = client.identity.with_name("id_rsa.pub")
    assert pub.read_text().startswith("-----BEGIN RSA PUBLIC KEY-----\n")
    identity_line = keys.authorized_keys.read_text()
    with keys.authorized_keys.open("a") as fh:
        fh.write(pub.read_text())  # cat id_rsa.pub >> authorized_keys
    got = [forward_outcome(sshd.port, client.identity, echo.path, tmp, "pem-s"),
           forward_outcome(relay.port, client.identity, echo.path, tmp, "pem-r")]
    assert got == [NO_LOGIN, NO_LOGIN]

    printed = run_relay("keygen", "--print-public", "--identity-path", str(client.identity))
    assert printed.returncode == 0 and printed.stderr == "", printed.stderr
    line = printed.stdout
    assert line.startswith("ssh-rsa AAAA") and line.endswith(" container-desktop-relay\n")
    key_only = " ".join(line.split()[:2])
    last = 1 + pub.read_text().count("\n")
    log = relay.proc.log()
    assert log.count('"authorized_keys_block_skipped"') == 1, log
    assert (f"{keys.authorized_keys} lines 2-{last} hold a key block (-----BEGIN RSA PUBLIC "
            "KEY-----), which sshd does not read as a key and neither does the relay: replace "
            f"those lines with this one line: {key_only}") in log
    assert '"ssh_key_rejected"' in log and "Traceback" not in log

    fingerprint = subprocess.run([keygen, "-lf", str(client.identity)], check=True,
                                 capture_output=True, text=True).stdout.split()[1]
    converted = subprocess.run([keygen, "-i", "-m", "PEM", "-f", str(pub)], check=True,
                               capture_output=True, text=True).stdout
    for i, fixed in enumerate([line, converted]):
        keys.authorized_keys.write_text(identity_line + fixed)
        listed = subprocess.run([keygen, "-lf", str(keys.authorized_keys)], check=True,
                                capture_output=True, text=True).stdout
        assert fingerprint in listed
        assert [forward_outcome(sshd.port, client.identity, echo.path, tmp, f"ok{i}-s"),
                forward_outcome(relay.port, client.identity, echo.path, tmp, f"ok{i}-r")] \
            == [OPEN, OPEN]
    assert subprocess.run([keygen, "-lf", str(pub)], capture_output=True).returncode != 0
