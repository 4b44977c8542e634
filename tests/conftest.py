"""Fixtures shared by every test: keys, temp dirs, real server/sshd/Podman processes."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import (
    EchoTarget,
    Keys,
    Podman,
    RelayServer,
    Sshd,
    short_tmpdir,
)


def pytest_configure(config: pytest.Config) -> None:
    """Warnings are errors (pyproject.toml), except the third-party ones listed in one place."""
    from container_desktop_relay.thirdparty import pytest_filters

    for line in pytest_filters():
        config.addinivalue_line("filterwarnings", line)


@pytest.fixture
def tmp(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A short temp directory (Unix socket paths must stay short), removed afterwards."""
    path = short_tmpdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def session_keys() -> Iterator[Keys]:
    """One RSA 4096 identity for the whole session (made by the relay's keygen)."""
    path = short_tmpdir()
    yield Keys(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def keys(session_keys: Keys, tmp: Path) -> Keys:
    """The session identity copied into this test's directory."""
    return session_keys.copy_to(tmp / "keys")


@pytest.fixture
def echo(tmp: Path) -> Iterator[EchoTarget]:
    """An echo Unix-socket target."""
    target = EchoTarget(tmp / "echo.sock")
    yield target
    target.close()


@pytest.fixture
def relay_server(keys: Keys, tmp: Path) -> Iterator[RelayServer]:
    """The relay's server role on a free port, using ``keys``."""
    server = RelayServer(keys, tmp)
    yield server
    server.stop()


@pytest.fixture
def sshd(keys: Keys, tmp: Path) -> Iterator[Sshd]:
    """A real OpenSSH sshd authorizing ``keys``."""
    daemon = Sshd(tmp, keys.authorized_keys)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    """Podman's Docker API service with a local busybox image (bb:latest)."""
    path = short_tmpdir()
    service = Podman(path)
    yield service
    service.stop()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["all", "correctness", "none"])
def asyncssh_patches(request: pytest.FixtureRequest,
                     monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each asyncssh patch mode in turn: applied in this process, and passed to the relay
    processes a test starts (CDR_ASYNCSSH_PATCHES); every patch is back afterwards."""
    from container_desktop_relay.ssh import tune as sshtune

    mode: str = request.param
    sshtune.apply(mode)
    monkeypatch.setenv("CDR_ASYNCSSH_PATCHES", mode)
    try:
        yield mode
    finally:
        sshtune.apply("all")
