"""known_hosts markers: the relay's client and a real ssh read the same file alike."""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import os
import subprocess
from pathlib import Path

import pytest

from clienthelp import ClientProc, owned
from helpers import EchoTarget, Keys, Sshd, exchange, make_ed25519, need_tool, run_relay, sha

pytestmark = pytest.mark.e2e

USER = getpass.getuser()


def ssh_verdict(sshd: Sshd, keys: Keys, known: Path) -> subprocess.CompletedProcess[str]:
    """Real ssh, strict host-key checking against ``known``, running ``true`` on sshd."""
    return subprocess.run(
        [need_tool("ssh"), "-p", str(sshd.port), "-i", str(keys.identity),
         "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
         "-o", f"UserKnownHostsFile={known}", "-o", "GlobalKnownHostsFile=/dev/null",
         "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", f"{USER}@127.0.0.1", "true"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def relay_verdict(sshd: Sshd, keys: Keys, known: Path, tmp: Path,
                  echo: EchoTarget) -> subprocess.CompletedProcess[str]:
    """The relay's client, expected to stop at once because the host key is refused."""
    return run_relay("client", "--listen", f"unix://{tmp}/refused.sock", "--ssh-connection",
                     f"ssh://{USER}@127.0.0.1:{sshd.port}{echo.path}", "--identity-path",
                     str(keys.identity), "--known-hosts-path", str(known), "--log-level",
                     "error", "--secure-host-key")


def _hashed(name: str) -> str:
    """``name`` as a hashed known_hosts pattern (``|1|salt|HMAC-SHA1``), as ssh writes it."""
    salt = os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def _pub(path: Path) -> str:
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


@pytest.mark.parametrize("form", ["plain", "hashed", "wildcard"])
def test_revoked_key_refused_even_when_pinned(form: str, sshd: Sshd, keys: Keys,
                                              echo: EchoTarget, tmp: Path) -> None:
    """A host key under @revoked is refused by ssh and by the relay although a line pins it."""
    label = f"[127.0.0.1]:{sshd.port}"
    key = _pub(sshd.host_key)
    known = tmp / "kh"
    known.write_text(f"# pinned, then revoked\n{label} {key}\n")
    revoked_for = "*" if form == "wildcard" else label
    if form == "hashed":  # ssh-keygen -H hashes the pin (it leaves marker lines alone)
        subprocess.run([need_tool("ssh-keygen"), "-H", "-f", str(known)], check=True,
                       capture_output=True)
        assert label not in known.read_text() and "|1|" in known.read_text()
        revoked_for = _hashed(label)
    with known.open("a") as fh:
        fh.write(f"@revoked {revoked_for} {key}\n")
    before = known.read_bytes()
    ssh = ssh_verdict(sshd, keys, known)
    assert ssh.returncode != 0 and "REVOKED HOST KEY DETECTED" in ssh.stderr, ssh.stderr
    relay = relay_verdict(sshd, keys, known, tmp, echo)
    assert relay.returncode == 1, relay.stderr
    assert "@revoked" in relay.stderr and f"{known} line 3" in relay.stderr, relay.stderr
    assert "Traceback" not in relay.stderr
    assert known.read_bytes() == before


def _host_certificate(tmp: Path, ca: Path, host_key: Path, principal: str) -> Path:
    subprocess.run([need_tool("ssh-keygen"), "-q", "-s", str(ca), "-I", "sshd", "-h",
                    "-n", principal, f"{host_key}.pub"], check=True, capture_output=True)
    return Path(f"{host_key}-cert.pub")


@pytest.fixture
def cert_sshd(keys: Keys, tmp: Path) -> Sshd:
    """sshd presenting a host certificate for 127.0.0.1 signed by ``tmp/ca``."""
    ca = make_ed25519(tmp / "ca")
    host_key = make_ed25519(tmp / "cert_host_key")
    cert = _host_certificate(tmp, ca, host_key, "127.0.0.1")
    daemon = Sshd(tmp, keys.authorized_keys, host_key, f"HostCertificate {cert}\n")
    yield daemon  # type: ignore[misc]
    daemon.stop()


def test_cert_authority_signed_host_is_accepted(request: pytest.FixtureRequest,
                                                cert_sshd: Sshd, keys: Keys,
                                                echo: EchoTarget, tmp: Path) -> None:
    """With only '@cert-authority [127.0.0.1]:P CA' in known_hosts, both ssh and the relay
    (under --secure-host-key) accept the certified host and forward byte-exact."""
    known = tmp / "kh"
    known.write_text(f"@cert-authority [127.0.0.1]:{cert_sshd.port} {_pub(tmp / 'ca')}\n")
    before = known.read_bytes()
    ssh = ssh_verdict(cert_sshd, keys, known)
    assert ssh.returncode == 0, ssh.stderr
    client = owned(request, ClientProc(keys, tmp, cert_sshd.port, str(echo.path),
                                       "--known-hosts-path", str(known), "--secure-host-key",
                                       user=USER))
    payload = b"certified" * 1000
    total, digest = exchange(client.socket, payload)
    assert (total, digest) == (len(payload), sha(payload))
    client.stop()
    assert known.read_bytes() == before  # nothing recorded: the CA vouches for the host


def test_host_certificate_from_another_ca_is_refused(cert_sshd: Sshd, keys: Keys,
                                                     echo: EchoTarget, tmp: Path) -> None:
    """A host certificate whose CA is not listed is refused by both, the relay naming the CA;
    a listed CA that is also @revoked is refused by both too."""
    other = make_ed25519(tmp / "other_ca")
    known = tmp / "kh"
    label = f"[127.0.0.1]:{cert_sshd.port}"
    known.write_text(f"@cert-authority {label} {_pub(other)}\n")
    assert ssh_verdict(cert_sshd, keys, known).returncode != 0
    relay = relay_verdict(cert_sshd, keys, known, tmp, echo)
    assert relay.returncode == 1 and "no @cert-authority line" in relay.stderr, relay.stderr
    ca = _pub(tmp / "ca")
    known.write_text(f"@cert-authority {label} {ca}\n@revoked * {ca}\n")
    ssh = ssh_verdict(cert_sshd, keys, known)
    assert ssh.returncode != 0, ssh.stderr
    relay = relay_verdict(cert_sshd, keys, known, tmp, echo)
    assert relay.returncode == 1, relay.stderr
    assert f"marked @revoked in {known} line 2" in relay.stderr, relay.stderr
    assert "Traceback" not in relay.stderr
