"""doctor's steps fail only where the relay would: authorized_keys use, observability ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from container_desktop_relay.commands.doctor import Doctor, Failed
from container_desktop_relay.config import load_config


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def _doctor(flags: dict[str, str]) -> Doctor:
    return Doctor(load_config(flags, environ={}), timeout=5)


def test_authorized_keys_used_only_where_the_set_up_reads_it() -> None:
    """Spawning, --generate-key-pair or an explicit path: checked; otherwise not used."""
    assert _doctor({})._authorized_keys_use() is None
    assert "spawns" in (_doctor({"distribution": "Ubuntu", "relay_program_path": "/r"})
                        ._authorized_keys_use() or "")
    assert "--generate-key-pair" in (_doctor({"generate_key_pair": "true"})
                                     ._authorized_keys_use() or "")
    assert "--authorized-keys-path" in (_doctor({"authorized_keys_path": "/a"})
                                        ._authorized_keys_use() or "")


@pytest.mark.asyncio
async def test_default_port_not_served_is_no_failure(refused_port: int) -> None:
    """A default (derived) health port that nobody serves: ok, reported as not served."""
    ssh_port = refused_port - 59  # the client's default health port is its SSH port + 59
    doctor = _doctor({"health_check_enabled": "true", "port": str(ssh_port)})
    detail = await doctor.check_observability()
    assert detail.startswith(f"http://127.0.0.1:{refused_port}/ready, "
                             f"http://127.0.0.1:{refused_port}/health not served")


@pytest.mark.asyncio
async def test_explicit_port_not_served_fails(refused_port: int) -> None:
    """An explicit health port nobody serves fails: the client would not run without it."""
    doctor = _doctor({"health_check_enabled": "true",
                      "health_check_port": str(refused_port)})
    with pytest.raises(Failed, match=f"127.0.0.1:{refused_port}/ready does not answer"):
        await doctor.check_observability()
