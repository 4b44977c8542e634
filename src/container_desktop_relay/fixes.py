"""The fix each common failure names: pure builders of one-line messages (no I/O, no state).

A failure the user can mend says what to do, with the command or flag: the client that gave up
says which server to start, a port in use names its holder and the flag that moves it, a client
without observability endpoints says they are off by default. The callers pass what they know;
these functions only phrase it, so their tests need no sockets.
"""

from __future__ import annotations

from collections.abc import Sequence

from container_desktop_relay._version import PROG
from container_desktop_relay.config import Config

__all__ = [
    "LOOPBACK_HOSTS",
    "gave_up",
    "port_in_use",
    "spawn_command",
    "status_not_served",
]

#: Host names a server on this machine answers to; any other means the server runs elsewhere.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "ip6-localhost"})


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def spawn_command(config: Config) -> list[str]:
    """The short command that runs the spawned server by hand, to see why it fails."""
    return ["wsl.exe", "--distribution", config.distribution, "--exec",
            config.relay_program_path, "server", "--port", str(config.port)]


def gave_up(error: str, attempts: int, *, host: str, port: int,
            spawn_command: Sequence[str] = (), exit_codes: Sequence[int] = (),
            exits: int = 0) -> str:
    """The client's start-up failure after ``attempts`` connection attempts, with the fix.

    Args:
        error: the last attempt's error (``cannot connect to host:port: reason``).
        host, port: the SSH server the client connects to.
        spawn_command: the command that starts the server, when this client spawns it.
        exit_codes: the spawned server's exit statuses, oldest first (empty: it never exited).
        exits: how many times the spawned server exited in all.
    """
    tried = _plural(attempts, "attempt")
    if spawn_command:
        command = " ".join(spawn_command)
        if exit_codes:
            times = f" ({exits} times)" if exits > 1 else ""
            return (f"{error} (gave up after {tried}); the spawned server exited with status "
                    f"{exit_codes[-1]}{times} "
                    "(its output is logged as server_output): run it by hand to see why: "
                    f"{command}; check --distribution and --relay-program-path")
        return (f"{error} (gave up after {tried}); the spawned server is running but does not "
                f"accept SSH on port {port}: see its server_output lines in this log, or run it "
                f"by hand: {command}")
    where = "on this machine" if host.lower() in LOOPBACK_HOSTS else f"on {host}"
    bind = "" if host.lower() in LOOPBACK_HOSTS else " --host 0.0.0.0"
    return (f"{error} (gave up after {tried}): is the server running? start it {where} first: "
            f"{PROG} server{bind} --port {port}, or point --ssh-connection at the host and port "
            "it listens on")


def port_in_use(flag: str, holder: str | None) -> str:
    """The fix for a TCP port in use, to append to the error: who holds it, and which flag
    moves this relay off it (``holder`` is e.g. ``pid 42 (sshd)``, None when unknown)."""
    if holder:
        return f"(held by {holder}; stop that process or choose another port with {flag})"
    return f"(stop that process or choose another port with {flag})"


def status_not_served(url: str, error: str, *, role: str, ssh_port: int,
                      derived: bool) -> str:
    """``status``'s line when nothing answers at ``url``: why, and how to serve it.

    Args:
        url: the /health URL asked.
        error: why it did not answer (``connection refused``).
        role: whose ports were derived (server or client).
        ssh_port: the SSH port the default ports derive from.
        derived: whether the port was derived from an SSH port (not given explicitly).
    """
    if role == "client":
        return (f"not served: no relay answers at {url}: {error} (a client serves /health, "
                "/ready and /metrics only when "
                "started with --health-check-enabled and --metrics-enabled: they are off by "
                "default; restart it with them, or, if it has them, its log says "
                "observability_port_in_use when their default port was taken)")
    if derived:
        return (f"not served: no relay answers at {url}: {error} (a relay on SSH port "
                f"{ssh_port} whose default port was taken runs without these endpoints; its log "
                "says observability_port_in_use)")
    return f"no relay answers at {url}: {error}"
