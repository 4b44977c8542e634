"""The Unix listener's socket file is 0600 from the instant bind creates it, not after a chmod."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from pathlib import Path

import pytest

from container_desktop_relay.endpoints.unix import start_unix_listener
from helpers import short_tmpdir


def test_socket_is_private_before_any_chmod(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under umask 0, the file bind creates is already 0600 when the listener first touches
    its mode: no window in which another user could connect (docs/security.md)."""
    tmp = short_tmpdir()
    path = tmp / "r.sock"
    seen: list[int] = []
    real_chmod = os.chmod

    def spy(target: os.PathLike[str] | str, mode: int, **kwargs: object) -> None:
        if Path(target) == path:
            seen.append(stat.S_IMODE(os.stat(path).st_mode))
        real_chmod(target, mode, **kwargs)  # type: ignore[arg-type]  # kwargs pass through

    monkeypatch.setattr(os, "chmod", spy)
    old = os.umask(0)

    async def run() -> int:
        listener = await start_unix_listener(str(path), asyncio.Protocol, buffer_size=8192)
        try:
            return stat.S_IMODE(path.stat().st_mode)
        finally:
            listener.close()

    try:
        final = asyncio.run(run())
    finally:
        os.umask(old)
        shutil.rmtree(tmp, ignore_errors=True)
    assert final == 0o600
    assert seen in ([], [0o600]), f"mode right after bind was {seen[0]:04o}"
