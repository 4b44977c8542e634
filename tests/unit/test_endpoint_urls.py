"""Endpoint URL parsing: unix:// and npipe:// forms, one-line errors for bad ones."""

from __future__ import annotations

import asyncio
import sys

import pytest

from container_desktop_relay.config import load_config
from container_desktop_relay.endpoints import Endpoint, open_listener, parse_endpoint
from container_desktop_relay.errors import ConfigError, ListenError


@pytest.mark.parametrize(
    ("url", "scheme", "address"),
    [
        ("unix:///tmp/relay.sock", "unix", "/tmp/relay.sock"),
        ("UNIX:///run/user/1000/x%20y.sock", "unix", "/run/user/1000/x y.sock"),
        ("npipe:////./pipe/container-desktop", "npipe", "\\\\.\\pipe\\container-desktop"),
        ("npipe://\\\\.\\pipe\\docker_engine", "npipe", "\\\\.\\pipe\\docker_engine"),
    ],
)
def test_parse_good(url: str, scheme: str, address: str) -> None:
    """Accepted URLs give the scheme and the OS-level address."""
    ep = parse_endpoint(url)
    assert (ep.scheme, ep.address, ep.url) == (scheme, address, url)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("/tmp/relay.sock", "must be unix:///absolute/path.sock"),
        ("tcp://127.0.0.1:2375", "must be unix:///absolute/path.sock"),
        ("unix://relay.sock", "must be absolute"),
        ("unix:///tmp/" + "x" * 120, "longer than the 107"),
        ("unix:///tmp/a.sock?x=1", "no query"),
        ("npipe:////./pipe/", "1 to"),
        ("npipe:////server/share/x", "npipe:////./pipe/NAME"),
    ],
)
def test_parse_bad(url: str, why: str) -> None:
    """Bad URLs raise ConfigError with one line that says what is allowed."""
    with pytest.raises(ConfigError) as info:
        parse_endpoint(url)
    text = str(info.value)
    assert why in text and "\n" not in text


def test_config_validates_listen() -> None:
    """A bad --listen fails configuration loading (exit status 2)."""
    with pytest.raises(ConfigError) as info:
        load_config({"listen": "unix://rel.sock"}, environ={})
    assert info.value.exit_code == 2


def test_npipe_elsewhere_is_a_clear_listen_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a non-Windows system a named pipe cannot be listened on, and says why."""
    monkeypatch.setattr(sys, "platform", "linux")  # the same check on Windows, without a skip
    ep = Endpoint("npipe", "\\\\.\\pipe\\x", "npipe:////./pipe/x")

    async def run() -> None:
        await open_listener(ep, asyncio.Protocol, buffer_size=8192)

    with pytest.raises(ListenError, match="named pipes exist only on Windows") as err:
        asyncio.run(run())
    assert isinstance(err.value, ConfigError) and err.value.exit_code == 2  # an input mistake


def test_unix_socket_on_windows_is_a_clear_listen_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The Windows build listens on named pipes only: --listen unix://... there is one line and
    exit 2 naming the pipe form, not a traceback from a POSIX-only call."""
    monkeypatch.setattr(sys, "platform", "win32")
    endpoint = parse_endpoint("unix:///tmp/relay.sock")
    with pytest.raises(ListenError, match=r"named pipes only; use --listen npipe:") as err:
        asyncio.run(open_listener(endpoint, asyncio.Protocol, buffer_size=65536))
    assert err.value.exit_code == 2
