"""Socket path checks: absolute, normalized, Linux, and inside --allow-socket when given."""

from __future__ import annotations

import pytest

from container_desktop_relay.ssh.server import check_socket_path
from container_desktop_relay.ssh.url import socket_path_problem


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


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/C:\\Users\\me\\docker.sock", "is a Windows path: it must be the Linux path on the "
                                        "server, like '/mnt/c/Users/me/docker.sock'"),
        ("C:/Users/me/docker.sock", "like '/mnt/c/Users/me/docker.sock'"),
        ("/run\\docker.sock", "is a Windows path"),
        ("/tmp/../tmp/x.sock", "is not normalized (no '.', '..' or '//' allowed): it must be "
                               "normalized, like '/tmp/x.sock'"),
        ("run/docker.sock", "is not absolute: it must be absolute, like '/run/docker.sock'"),
    ],
)
def test_refusal_names_the_path_and_what_is_allowed(path: str, why: str) -> None:
    """Each refusal names the path as given, what is wrong and the form that would pass;
    a Windows path (a drive letter or a backslash) is never a socket on the server."""
    reason = check_socket_path(path, ["/*"])
    assert reason is not None and f"socket path '{path}' " in reason and why in reason


@pytest.mark.parametrize("path", ["/var/run/docker.sock", "/run/../x", "/C:\\x.sock", "rel",
                                  "/a//b", "/x\x00y", "/run/podman/podman.sock/"])
def test_server_and_client_apply_one_rule(path: str) -> None:
    """Without an allowlist the server refuses exactly what the client refuses at start
    (socket_path_problem, shared), with the same words."""
    assert check_socket_path(path, []) == socket_path_problem(path)
