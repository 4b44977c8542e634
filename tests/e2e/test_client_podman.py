"""The whole chain against a real engine: docker CLI / docker-py → client → server → Podman."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from clienthelp import ClientProc, owned
from helpers import FACTOR, Keys, Podman, RelayServer, sha, stopping, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def chain(
    request: pytest.FixtureRequest, podman: Podman, relay_server: RelayServer, keys: Keys, tmp: Path
) -> Iterator[ClientProc]:
    """A client whose socket reaches Podman's API through the relay server."""
    client = owned(request, ClientProc(keys, tmp, relay_server.port, str(podman.socket)))
    yield client
    client.stop()


def test_docker_version(podman: Podman, chain: ClientProc) -> None:
    """`docker version` sees the engine through the client."""
    result = podman.docker_cli(chain.socket, "version")
    assert result.returncode == 0, result.stderr
    assert b"Server:" in result.stdout


def test_docker_run_stdin_20mb(podman: Podman, chain: ClientProc) -> None:
    """20 MB of random bytes piped into `docker run --rm -i ... sha256sum` arrive exactly
    (the container's digest is ours) and the stdin half-close ends the command."""
    payload = os.urandom(20_000_000)
    result = podman.docker_cli(
        chain.socket,
        "run",
        "--rm",
        "-i",
        "--network",
        "none",
        podman.IMAGE,
        "sha256sum",
        input=payload,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [sha(payload).encode(), b"-"]


def test_docker_run_streams_output(podman: Podman, chain: ClientProc) -> None:
    """Output of a running container arrives as it is produced, not when the container ends."""
    env = dict(os.environ, DOCKER_HOST=f"unix://{chain.socket}")
    env.pop("DOCKER_CONTEXT", None)
    script = "echo first; sleep 2; echo second"
    proc = subprocess.Popen(
        [podman.docker, "run", "--rm", "--network", "none", podman.IMAGE, "sh", "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        first_at = time.monotonic()
        second = proc.stdout.readline()
        second_at = time.monotonic()
        assert proc.wait(60 * FACTOR) == 0, proc.stderr.read() if proc.stderr else b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert (first, second) == (b"first\n", b"second\n")
    assert second_at - first_at >= 1.5  # the first line came while the container slept


def test_100_concurrent_docker_version(
    podman: Podman, chain: ClientProc, relay_server: RelayServer
) -> None:
    """100 `docker version` at once all succeed, over a single SSH connection."""

    def one(_: int) -> subprocess.CompletedProcess[bytes]:
        return podman.docker_cli(
            chain.socket, "version", "--format", "{{.Server.Version}}", timeout=180
        )

    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(one, range(100)))
    failures = [r.stderr for r in results if r.returncode != 0 or not r.stdout.strip()]
    assert not failures, failures[:3]
    assert relay_server.proc.log().count('"ssh_authenticated"') == 1


def test_docker_py(podman: Podman, chain: ClientProc) -> None:
    """docker-py talks to the engine through the client socket: version, ping, run, images."""
    import docker

    client = docker.DockerClient(base_url=f"unix://{chain.socket}", timeout=120)
    try:
        assert client.ping() is True
        assert client.version()["Version"]
        assert any(
            podman.IMAGE.split(":")[0] in tag
            for image in client.images.list()
            for tag in image.tags
        )
        out = client.containers.run(
            podman.IMAGE, ["sh", "-c", "echo hello from busybox"], remove=True, network_mode="none"
        )
        assert out == b"hello from busybox\n"
    finally:
        client.close()


def test_engine_reachable_across_server_restart(
    request: pytest.FixtureRequest, podman: Podman, keys: Keys, tmp: Path
) -> None:
    """The engine stays reachable through the same client socket across a server restart."""
    server = owned(request, RelayServer(keys, tmp))
    client = owned(request, ClientProc(keys, tmp, server.port, str(podman.socket)))
    with stopping(client):
        assert podman.docker_cli(client.socket, "version").returncode == 0
        server.stop()
        server = owned(request, RelayServer(keys, tmp, port=server.port))
        with stopping(server):
            # linked again on its own (no client restart); then the engine answers
            wait_for(lambda: client.log().count('"client_ready"') >= 2, 30, "relink")
            result = podman.docker_cli(client.socket, "version")
            assert result.returncode == 0, result.stderr
