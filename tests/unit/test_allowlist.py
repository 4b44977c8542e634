"""Socket path checks: absolute, normalized, and inside --allow-socket when given."""

from __future__ import annotations

import pytest

from container_desktop_relay.ssh.server import check_socket_path


@pytest.mark.parametrize("path", ["/var/run/docker.sock", "/run/podman/podman.sock"])
def test_any_absolute_path_when_no_allowlist(path: str) -> None:
    """Without patterns any absolute normalized path is allowed (as OpenSSH does)."""
    assert check_socket_path(path, []) is None


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("run/docker.sock", "not absolute"),
        ("", "not absolute"),
        ("/run/../etc/shadow", "not normalized"),
        ("/run/./docker.sock", "not normalized"),
        ("//run/docker.sock", "not normalized"),
        ("/run//docker.sock", "not normalized"),
        ("/run/docker.sock/", "not normalized"),
        ("/run/\x00x", "NUL"),
    ],
)
def test_refused_paths(path: str, why: str) -> None:
    """Relative paths, dot tricks and NULs are refused with a reason."""
    reason = check_socket_path(path, [])
    assert reason is not None and why in reason


def test_allowlist_globs() -> None:
    """With patterns, only matching paths pass, and the reason lists the patterns."""
    allow = ["/var/run/docker.sock", "/run/user/*/podman/podman.sock"]
    assert check_socket_path("/var/run/docker.sock", allow) is None
    assert check_socket_path("/run/user/1000/podman/podman.sock", allow) is None
    reason = check_socket_path("/run/containerd/containerd.sock", allow)
    assert reason is not None and "not allowed" in reason and "/var/run/docker.sock" in reason
    reason = check_socket_path("/var/run/../run/docker.sock", allow)
    assert reason is not None and "not normalized" in reason
