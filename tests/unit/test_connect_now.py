"""connect_now: the server's wait-free Unix-socket connect and its full-backlog fallback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from container_desktop_relay.server import connect_now


def test_connects_to_a_listener(tmp_path: Path) -> None:
    path = str(tmp_path / "t.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(4)
        sock = connect_now(path)
        assert sock is not None
        with sock:
            peer, _ = listener.accept()
            with peer:
                sock.sendall(b"hi")
                assert peer.recv(2) == b"hi"


def test_full_backlog_means_wait(tmp_path: Path) -> None:
    """None (not an error) once the listener's backlog is full: the caller waits for it."""
    path = str(tmp_path / "t.sock")
    pending: list[socket.socket] = []
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(1)
        try:
            for _ in range(64):
                sock = connect_now(path)
                if sock is None:
                    break
                pending.append(sock)
            else:
                pytest.fail("the backlog never filled")
            assert pending  # some connected before the backlog filled
        finally:
            for sock in pending:
                sock.close()


def test_failures_raise_at_once(tmp_path: Path) -> None:
    path = tmp_path / "t.sock"
    with pytest.raises(FileNotFoundError):
        connect_now(str(path))
    with socket.socket(socket.AF_UNIX) as bound:  # bound, not listening
        bound.bind(str(path))
        with pytest.raises(ConnectionRefusedError):
            connect_now(str(path))
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(ConnectionRefusedError):
        connect_now(str(path))
