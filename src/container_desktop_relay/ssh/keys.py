"""Key files: RSA 4096 generation, safe loading, authorized_keys upkeep; never destroys data."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import asyncssh
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from container_desktop_relay.errors import KeyFileError
from container_desktop_relay.log import get_logger
from container_desktop_relay.ssh.authkeys import read_authorized_keys
from container_desktop_relay.ssh.mounts import on_windows_drive

__all__ = [
    "KeyPairResult",
    "append_line",
    "atomic_write",
    "authorized_key_line",
    "check_not_writable_by_others",
    "ensure_authorized",
    "ensure_key_pair",
    "identity_public_key",
    "load_authorized_keys",
    "load_private_key",
    "public_pem",
    "read_public_key",
]

log = get_logger(__name__)
RSA_BITS = 4096


@dataclass(frozen=True, slots=True)
class KeyPairResult:
    """What :func:`ensure_key_pair` did."""

    private_path: Path
    public_path: Path
    created: bool
    authorized_added: bool


def atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` atomically (temp file + fsync + rename), at ``mode``.

    A symlink at ``path`` is followed, so the file it points to is the one replaced.
    """
    target = Path(os.path.realpath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if sys.platform != "win32":
                os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def append_line(path: Path, line: bytes, mode: int = 0o600) -> int:
    """Append ``line`` to ``path`` in place; returns its line number.

    The file's existing bytes, inode, owner, mode and links are never touched (unlike a
    rewrite-and-rename, which would also lose a line another program appended meanwhile):
    one ``O_APPEND`` write adds the line, after a newline when the file lacked a final one.
    A missing file is created at ``mode``. Appenders of this program take an advisory lock
    (POSIX) so the check for the final newline and the write stay together.
    """
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, mode)
    try:
        if sys.platform != "win32":
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        existing = b"".join(chunks)
        data = line if not existing or existing.endswith(b"\n") else b"\n" + line
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)  # also releases the lock
    return existing.count(b"\n") + (0 if data is line else 1) + 1


def _check_private_permissions(path: Path) -> bool:
    """Refuse a group/other-accessible key; True when the file is provably this user's own
    (POSIX owner and mode checked), False where modes mean nothing (Windows, DrvFs)."""
    # DrvFs modes are synthesized; Windows ACLs rule
    if sys.platform == "win32" or on_windows_drive(path):
        return False
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"private key {path} is accessible by group/others (mode {mode:04o}); "
            f"it must be 0600: run chmod 600 {path}"
        )
    return info.st_uid == os.getuid()


def load_private_key(path: Path, *, what: str = "identity key") -> asyncssh.SSHKey:
    """Load a private key after checking it exists and is private (0600), as OpenSSH does.

    Raises:
        KeyFileError: missing, unreadable, too open or not a private key.
    """
    if not path.exists():
        raise KeyFileError(
            f"{what} {path} does not exist; create it with --generate-key-pair or point "
            "--identity-path at an existing key"
        )
    if read_public_key(path) is not None:
        private = path.with_suffix("") if path.suffix == ".pub" else None
        hint = f" ({private}?)" if private is not None and private.exists() else ""
        raise KeyFileError(
            f"{what} {path} is a public key; the path must name the private key{hint}"
        )
    # cryptography's RSA consistency check costs 0.5-0.7 s for a 4096-bit key at every start
    # (most of the server's start-up). It guards against malformed keys from untrusted
    # sources; a 0600 file owned by this user is our own (keygen made or checked it), so
    # only such a file skips it. Anywhere else (Windows, DrvFs, another owner) it still runs.
    own = _check_private_permissions(path)
    try:
        return asyncssh.read_private_key(str(path), unsafe_skip_rsa_key_validation=own)
    except (OSError, asyncssh.KeyImportError, ValueError) as exc:
        raise KeyFileError(f"{what} {path} cannot be loaded: {exc}") from None


def read_public_key(path: Path) -> asyncssh.SSHKey | None:
    """The public key in ``path`` in any format asyncssh reads (OpenSSH line, PEM "RSA PUBLIC
    KEY"/"PUBLIC KEY", RFC 4716); None when it holds none or cannot be read."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"PRIVATE KEY" in data:
        return None
    try:
        return asyncssh.import_public_key(data)
    except (asyncssh.KeyImportError, ValueError):
        return None


def identity_public_key(path: Path) -> asyncssh.SSHKey:
    """The public half of the identity key at ``path`` (``keygen --print-public``).

    It is read from the private key; where that is absent, from the ``.pub`` next to it (in any
    format :func:`read_public_key` reads), or from ``path`` itself when it names a public key
    file, so a ``id_rsa.pub`` copied to another machine can be turned into its OpenSSH line.

    Raises:
        KeyFileError: there is no such key, or the private key is unsafe or unreadable.
    """
    public = read_public_key(path) if path.is_file() else None
    if public is not None:
        return public
    if path.exists() or not path.with_name(path.name + ".pub").exists():
        return load_private_key(path).convert_to_public()
    public_path = path.with_name(path.name + ".pub")
    public = read_public_key(public_path)
    if public is None:
        raise KeyFileError(f"public key {public_path} is not a public key, and its private key "
                           f"{path} does not exist")
    return public


def public_pem(key: asyncssh.SSHKey) -> bytes:
    """The public half of an RSA key as PEM ("RSA PUBLIC KEY", PKCS#1), as the spec's id_rsa.pub."""
    crypto_key = key.pyca_key.public_key() if hasattr(key.pyca_key, "public_key") else None
    if not isinstance(crypto_key, rsa.RSAPublicKey):
        return key.export_public_key("openssh")
    return crypto_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)


def authorized_key_line(key: asyncssh.SSHKey, comment: str = "container-desktop-relay") -> bytes:
    """The OpenSSH authorized_keys line for ``key``."""
    blob = key.export_public_key("openssh").strip().split()[:2]
    return b" ".join([*blob, comment.encode()]) + b"\n"


def check_not_writable_by_others(path: Path, what: str) -> None:
    """Refuse a key-list file that other users could write (OpenSSH's StrictModes).

    Raises:
        KeyFileError: the file is group/world-writable or owned by another (non-root) user.
    """
    # DrvFs modes are synthesized; Windows ACLs rule
    if sys.platform == "win32" or on_windows_drive(path):
        return
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise KeyFileError(
            f"{what} {path} is writable by group/others (mode {mode:04o}), so anyone could "
            f"add a key; run chmod go-w {path}"
        )
    if st.st_uid not in (0, os.geteuid()):
        raise KeyFileError(f"{what} {path} is owned by uid {st.st_uid}, not by this user")


def load_authorized_keys(path: Path, *, strict: bool = False) -> list[asyncssh.SSHKey]:
    """Public keys in an OpenSSH authorized_keys file (whatever their options); a missing
    file holds none. Lines sshd would not read are skipped (:mod:`authkeys`).

    With ``strict`` (the server), a file other users could write is refused.

    Raises:
        KeyFileError: the file exists but cannot be read, or is unsafe under ``strict``.
    """
    if strict:
        check_not_writable_by_others(path, "authorized keys")
    return read_authorized_keys(path).listed_keys()


def _same_key(a: asyncssh.SSHKey, b: asyncssh.SSHKey) -> bool:
    return a.public_data == b.public_data


def ensure_authorized(key: asyncssh.SSHKey, authorized_keys: Path) -> bool:
    """Append ``key`` to ``authorized_keys`` unless present; every existing line is kept.

    Returns:
        True when the key was added.

    Raises:
        KeyFileError: the file or its directory cannot be read or written.
    """
    try:
        existing = authorized_keys.read_bytes()
    except FileNotFoundError:
        existing = b""
    except OSError as exc:
        raise KeyFileError(
            f"cannot read authorized keys {authorized_keys}: {exc.strerror}"
        ) from None
    for present in load_authorized_keys(authorized_keys) if existing else []:
        if _same_key(present, key):
            return False
    try:
        _ensure_dir(authorized_keys.parent)
        append_line(authorized_keys, authorized_key_line(key))
    except OSError as exc:
        raise KeyFileError(
            f"cannot update authorized keys {authorized_keys}: {exc.strerror or exc}"
        ) from None
    return True


def _ensure_dir(path: Path) -> None:
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)


def ensure_key_pair(private_path: Path, authorized_keys: Path | None) -> KeyPairResult:
    """Create the RSA 4096 pair at ``private_path`` if missing (else reuse it), write its PEM
    public half to ``<private>.pub`` if missing, and authorize it in ``authorized_keys``.

    Never leaves a pair that does not match: a ``.pub`` that is not the private key's public
    half (in any format) is refused before anything is written, naming the fix. Once a new
    private key exists, it is authorized and its ``.pub`` written even if one of the two fails;
    the failure is reported afterwards.

    Raises:
        KeyFileError: an existing key is unsafe or unreadable, a stale ``.pub`` is in the way,
            or a file cannot be written.
    """
    public_path = private_path.with_name(private_path.name + ".pub")
    created = False
    if private_path.exists():
        key = load_private_key(private_path)
        _check_public_half(public_path, key)
        log.info("key_pair_reused", extra={"path": str(private_path)})
    else:
        if public_path.exists():
            raise KeyFileError(
                f"public key {public_path} exists but its private key {private_path} does not; "
                f"a new key would not match it: move it aside (mv {public_path} "
                f"{public_path}.old) or point --identity-path at its private key"
            )
        pyca = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        pem = pyca.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        try:
            _ensure_dir(private_path.parent)
            _create_exclusive(private_path, pem)
        except OSError as exc:
            raise KeyFileError(
                f"cannot write private key {private_path}: {exc.strerror or exc}"
            ) from None
        key = asyncssh.import_private_key(pem)
        created = True
        log.info("key_pair_generated", extra={"path": str(private_path), "bits": RSA_BITS})
    failures: list[str] = []
    added = False
    if authorized_keys:
        try:
            added = ensure_authorized(key, authorized_keys)
        except KeyFileError as exc:
            failures.append(str(exc))
    if not public_path.exists():
        try:
            atomic_write(public_path, public_pem(key), 0o644)
        except OSError as exc:
            failures.append(f"cannot write public key {public_path}: {exc.strerror or exc}")
    if failures:
        kept = f" (the new key {private_path} is kept)" if created else ""
        raise KeyFileError("; ".join(failures) + kept)
    return KeyPairResult(private_path, public_path, created, added)


def _check_public_half(public_path: Path, key: asyncssh.SSHKey) -> None:
    """Refuse a ``.pub`` next to ``key`` that is not its public half (any format matches)."""
    if not public_path.exists():
        return
    public = read_public_key(public_path)
    if public is not None and public.public_data == key.public_data:
        return
    what = "is not a public key" if public is None else (
        f"holds another key ({public.get_fingerprint()}, not {key.get_fingerprint()})")
    raise KeyFileError(
        f"public key {public_path} {what}; ssh would offer it for the private key next to it: "
        f"move it aside (mv {public_path} {public_path}.old) and run keygen again to write the "
        "matching one"
    )


def _create_exclusive(path: Path, data: bytes) -> None:
    """Write a new private file; fails rather than replace one that appeared meanwhile."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if sys.platform != "win32":
        os.chmod(path, 0o600)
