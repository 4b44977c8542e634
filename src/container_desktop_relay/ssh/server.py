"""Server role: accept SSH, authenticate by key, forward direct-streamlocal channels to sockets."""

from __future__ import annotations

import asyncio
import errno
import fnmatch
import functools
import itertools
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn, cast

import asyncssh

from container_desktop_relay.config import Config
from container_desktop_relay.core.ends import TransportEnd
from container_desktop_relay.core.idle import sweep_idle
from container_desktop_relay.core.pump import CLIENT, TARGET, Pump
from container_desktop_relay.core.registry import ConnectionRegistry
from container_desktop_relay.errors import SERVER_DRAINING, ListenError
from container_desktop_relay.fixes import port_in_use
from container_desktop_relay.log import get_logger
from container_desktop_relay.observability.metrics import Metrics, account_finished
from container_desktop_relay.runtime.portowner import tcp_port_holder
from container_desktop_relay.runtime.state import RoleState
from container_desktop_relay.ssh import tune as sshtune
from container_desktop_relay.ssh.authkeys import LINE_OPTION, AuthorizedKeys, AuthorizedKeysReader
from container_desktop_relay.ssh.channel import ChannelEnd
from container_desktop_relay.ssh.keys import check_not_writable_by_others, load_private_key
from container_desktop_relay.ssh.options import listen_options
from container_desktop_relay.ssh.url import socket_path_problem

__all__ = ["RelayServer", "check_socket_path"]

log = get_logger(__name__)
#: Rejected public keys allowed per connection before it is dropped (OpenSSH's MaxAuthTries).
MAX_AUTH_TRIES = 6
_ssh_ids = itertools.count(1)


def check_socket_path(path: str, allow: list[str] | tuple[str, ...]) -> str | None:
    """Why ``path`` may not be opened (None when it may).

    The path must pass :func:`~container_desktop_relay.ssh.url.socket_path_problem` (the rule
    the client also checks at start: absolute, normalized, a Linux path), and match one of the
    ``allow`` globs when any are given.
    """
    return _check_socket_path(path, tuple(allow))


@functools.lru_cache(maxsize=256)
def _check_socket_path(path: str, allow: tuple[str, ...]) -> str | None:
    # Cached: clients ask for the same few paths on every connection.
    if problem := socket_path_problem(path):
        return problem
    if allow and not any(fnmatch.fnmatchcase(path, pattern) for pattern in allow):
        return f"socket path {path} is not allowed (allowed: {', '.join(allow)})"
    return None


def _target_error(path: str, exc: BaseException, wait: float) -> str:
    if isinstance(exc, TimeoutError):
        return (f"target socket {path} accepted nothing within {wait:g}s "
                f"(its listen backlog stayed full)")
    if isinstance(exc, FileNotFoundError):
        return f"target socket {path} does not exist"
    if isinstance(exc, ConnectionRefusedError):
        return f"target socket {path} refused the connection (nothing is listening)"
    if isinstance(exc, PermissionError):
        return f"permission denied connecting to target socket {path}"
    if isinstance(exc, OSError) and exc.errno == errno.ENOTSOCK:
        return f"target {path} is not a socket"
    return f"cannot connect to target socket {path}: {exc}"


def connect_now(path: str) -> socket.socket | None:
    """A Unix socket connected to ``path`` without waiting; None when the backlog is full.

    A Unix-socket connect completes (or fails) in the call itself, so the common case needs
    no timer and no event-loop round trip; only a full listen backlog makes it wait.
    """
    if sys.platform == "win32":
        raise NotImplementedError("the server role runs on Linux")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.connect(path)
    except BlockingIOError:
        sock.close()
        return None
    except BaseException:
        sock.close()
        raise
    return sock


async def _adopt(factory: Any, sock: socket.socket) -> tuple[asyncio.BaseTransport, Any]:
    """Wrap an already connected socket in a transport (closing it if that fails)."""
    try:
        return await asyncio.get_running_loop().create_unix_connection(factory, sock=sock)
    except BaseException:
        sock.close()
        raise


class RelayServer:
    """The server role: SSH listener + per-channel pumps to Unix sockets + drain on shutdown."""

    def __init__(self, config: Config, metrics: Metrics, state: RoleState) -> None:
        self.config = config
        self.metrics = metrics
        self.state = state
        #: live forwarded connections and pending target connects (closing ones do not count)
        self.registry = ConnectionRegistry(config.max_connections, count_closing=False)
        metrics.observe(self.registry)
        #: SSH connections open now
        self.connections: set[_ServerConnection] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._identity: asyncssh.SSHKey | None = None
        self.port = 0
        self._sweeper: asyncio.Task[None] | None = None
        #: tasks wrapping just-connected target sockets in transports (kept referenced)
        self.adopting: set[asyncio.Task[None]] = set()
        #: authorized_keys warnings already logged (the file is re-read per connection)
        self._warned: set[tuple[object, ...]] = set()
        self._authorized = AuthorizedKeysReader(config.path("authorized_keys_path"),
                                                self._warn_once)

    async def start(self) -> None:
        """Load keys and start listening.

        Raises:
            KeyFileError: the identity or host key is missing or unsafe.
            ListenError: the address cannot be bound.
        """
        config = self.config
        sshtune.apply(config.asyncssh_patches)
        self._identity = load_private_key(config.path("identity_path"))
        host_key = (
            load_private_key(config.path("host_key_path"), what="host key")
            if config.host_key_path
            else self._identity
        )
        self.authorized_keys()  # unsafe or unreadable authorized_keys: fail at start, clearly
        try:
            self._acceptor = await asyncssh.listen(
                config.host, config.port,
                **listen_options(config, host_key, lambda: _ServerConnection(self)))
        except OSError as exc:
            why = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            if exc.errno == errno.EADDRINUSE:
                why += " " + port_in_use("--port", tcp_port_holder(config.port))
            raise ListenError(f"cannot listen on {config.host}:{config.port}: {why}") from None
        self.port = self._acceptor.get_port()
        self._sweeper = asyncio.create_task(
            sweep_idle(lambda: self.registry.active, config.read_timeout, config.write_timeout),
            name="idle-sweeper",
        )
        self.state.set_ready("listening")
        log.info("server_listening", extra={"host": config.host, "port": self.port})

    def authorized_keys(self) -> AuthorizedKeys:
        """authorized_keys as it reads now (each warning about a line is logged once).

        Raises:
            KeyFileError: the file is unsafe (others can write it) or unreadable.
        """
        check_not_writable_by_others(self._authorized.path, "authorized keys")
        return self._authorized.read()

    def _warn_once(self, event: str, fields: dict[str, object]) -> None:
        seen = (event, *fields.values())
        if seen not in self._warned:
            self._warned.add(seen)
            log.warning(event, extra=fields)

    def allowed_keys(self, listed: AuthorizedKeys) -> asyncssh.SSHAuthorizedKeys:
        """What asyncssh matches logins against: the file's lines, plus the identity's public
        half unless the file has a line of its own for it (whose options then rule)."""
        identity = self._identity
        extra = []
        if identity is not None and not any(
                key.public_data == identity.public_data for key in listed.listed_keys()):
            extra.append(identity)
        return listed.for_asyncssh(extra)

    def stop_accepting(self) -> None:
        """Stop listening; existing connections go on."""
        if self._acceptor is not None:
            self._acceptor.close()
            self._acceptor = None

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` for forwarded connections and pending target connects to
        finish; returns how many connections remain."""
        return await self.registry.drain(timeout)

    def close_all(self) -> None:
        """Close every forwarded connection and SSH connection now."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.registry.close_all()
        for conn in list(self.connections):
            conn.close()

    # ------------------------------------------------------------ channels
    def finished(self, pump: Pump) -> None:
        """A pump ended: account and log it once."""
        self.registry.finished(pump)
        account_finished(self.metrics, pump, log)


def _login_timed_out(exc: Exception | None) -> bool:
    """Whether asyncssh closed the connection because its login timeout ran out."""
    return isinstance(exc, asyncssh.ConnectionLost) and "timeout" in str(exc).lower()


class _ServerConnection(asyncssh.SSHServer):
    """One SSH client connection to the server role."""

    def __init__(self, relay: RelayServer) -> None:
        self.relay = relay
        self.ssh_id = f"ssh-{next(_ssh_ids)}"
        self.peer = "?"
        self.user = ""
        self.authenticated = False
        #: whether the client asked to log in at all (a host-key probe never does)
        self.login_attempted = False
        self.failed_keys = 0
        self.lost = False
        self.peer_addr = ""
        self.auth_keys = AuthorizedKeys(relay.config.path("authorized_keys_path"))
        #: why this login may not open direct-streamlocal channels (its authorized_keys line)
        self.forwarding_refused: str | None = None
        self._conn: asyncssh.SSHServerConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def _host_key_probe(self, exc: Exception | None) -> bool:
        """Whether this connection only fetched the host key (doctor's host-key check,
        ssh-keyscan): the key exchange got as far as the server's host key, then the client
        left without asking to log in. That is no failed login; garbage, a key exchange that
        failed and a login that timed out are."""
        if self.login_attempted or self._conn is None or _login_timed_out(exc):
            return False
        return self._conn.get_extra_info("recv_cipher") is not None

    def _extra(self, **fields: Any) -> dict[str, Any]:
        return {"ssh_id": self.ssh_id, "remote": self.peer, **fields}

    # --- connection
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.peer_addr = str(peer[0]) if peer else ""
        self.relay.connections.add(self)
        sshtune.tune_transport(conn)
        log.debug("ssh_connection_opened", extra=self._extra())

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.relay.connections.discard(self)
        if not self.authenticated:
            reason = str(exc) if exc else "closed before authenticating"
            if self._host_key_probe(exc):
                log.debug("ssh_connection_closed", extra=self._extra(
                    reason=f"closed before any login attempt: {reason}"))
                return
            log.warning("ssh_login_failed", extra=self._extra(user=self.user, reason=reason))
            self.relay.metrics.error("connection", f"login from {self.peer} failed: {reason}")
        else:
            log.info("ssh_connection_closed",
                     extra=self._extra(user=self.user, reason=str(exc) if exc else "closed"))

    # --- authentication: public keys only
    def begin_auth(self, username: str) -> bool:
        self.user = username
        self.login_attempted = True
        allowed = self.relay.config.allowed_users
        assert self._conn is not None
        if allowed and username not in allowed:
            log.warning("ssh_user_not_allowed", extra=self._extra(user=username))
            self._conn.set_authorized_keys(asyncssh.SSHAuthorizedKeys())
            return True
        try:
            self.auth_keys = self.relay.authorized_keys()
        except Exception as exc:  # a broken file must not crash the server
            log.error("authorized_keys_refused", extra=self._extra(error=str(exc)))
        self._conn.set_authorized_keys(self.relay.allowed_keys(self.auth_keys))
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # Reached only for keys that authorized_keys did not accept: count the failure.
        self.failed_keys += 1
        log.info("ssh_key_rejected", extra=self._extra(
            user=username, fingerprint=key.get_fingerprint(), attempt=self.failed_keys,
            reason=self.auth_keys.why_refused(key, self.peer_addr)))
        if self.failed_keys >= MAX_AUTH_TRIES and self._conn is not None:
            reason = f"too many authentication failures ({self.failed_keys})"
            log.warning("ssh_auth_tries_exceeded", extra=self._extra(user=username))
            asyncio.get_running_loop().call_soon(
                self._conn.disconnect, asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, reason)
        return False

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # Reached only for certificates that no cert-authority line accepted.
        log.info("ssh_certificate_rejected", extra=self._extra(
            user=username, ca_fingerprint=key.get_fingerprint(),
            reason=self.auth_keys.why_refused_ca(key, username, self.peer_addr)))
        return False

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def auth_completed(self) -> None:
        self.authenticated = True
        assert self._conn is not None
        # set only on lines of the file; asyncssh gives a non-standard option's values as a list
        line = cast("list[str] | None", self._conn.get_key_option(LINE_OPTION))
        entry = self.auth_keys.entry(int(line[-1])) if line else None
        by = f"{self.auth_keys.path} line {entry.lineno}" if entry else "identity"
        self.forwarding_refused = entry.forwarding_refused if entry else None
        log.info("ssh_authenticated", extra=self._extra(
            user=self.user, authorized_by=by, forwarding_refused=self.forwarding_refused))

    # --- channels: only direct-streamlocal
    def session_requested(self) -> bool:
        log.warning("channel_refused", extra=self._extra(channel="session"))
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
            "session channels (shell, exec, subsystem) are not allowed: this server only "
            "forwards direct-streamlocal@openssh.com channels",
        )

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> bool:
        log.warning("channel_refused",
                    extra=self._extra(channel="direct-tcpip", dest=f"{dest_host}:{dest_port}"))
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
            "TCP forwarding (direct-tcpip) is not allowed: this server only forwards to "
            "Unix sockets",
        )

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        log.warning("forward_request_refused", extra=self._extra(kind="tcpip-forward"))
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        log.warning("forward_request_refused", extra=self._extra(kind="streamlocal-forward"))
        return False

    def unix_connection_requested(self, dest_path: str) -> Any:
        relay = self.relay
        config = relay.config
        refused = None
        code = asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
        if self.forwarding_refused is not None:
            refused = self.forwarding_refused
        elif relay.state.draining:
            refused, code = SERVER_DRAINING, asyncssh.OPEN_CONNECT_FAILED
        elif why := check_socket_path(dest_path, config.allow_socket):
            refused = why
        elif not relay.registry.has_room():
            refused = f"connection pool exhausted (max: {config.max_connections})"
            code = asyncssh.OPEN_RESOURCE_SHORTAGE
        if refused is not None:
            log.warning("channel_refused", extra=self._extra(socket_path=dest_path,
                                                             reason=refused))
            relay.metrics.error("connection", refused)
            raise asyncssh.ChannelOpenError(code, refused)
        assert self._conn is not None
        started = time.monotonic()
        try:
            sock = connect_now(dest_path)
        except OSError as exc:
            self._target_failed(dest_path, exc)
        try:
            chan = self._conn.create_unix_channel(
                window=sshtune.channel_window(), max_pktsize=sshtune.max_packet_size()
            )
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        if sock is None:  # the listener's backlog is full: wait for it, counted as pending
            relay.registry.begin_open()
            return chan, self._open_when_accepted(dest_path, started)
        relay.state.socket_reached(dest_path)
        # Connected: the channel is confirmed now; wrapping the socket in a transport takes
        # one event-loop pass, and the pump holds (and pauses) anything sent meanwhile.
        pump = Pump(relay.registry.new_id(), dest_path, relay.finished)
        self._register(pump, dest_path, started)
        task = asyncio.get_running_loop().create_task(self._adopt_target(pump, sock))
        relay.adopting.add(task)
        task.add_done_callback(relay.adopting.discard)
        return chan, ChannelEnd(pump, CLIENT)

    def _target_failed(self, path: str, exc: BaseException) -> NoReturn:
        relay = self.relay
        reason = _target_error(path, exc, relay.config.max_request_wait_time)
        relay.metrics.error("socket", reason)
        # A missing socket is retried every ~2 s by a client's probe: warn once, then quietly.
        level = logging.WARNING if relay.state.socket_failed(path, reason) else logging.DEBUG
        log.log(level, "channel_open_failed", extra=self._extra(socket_path=path, reason=reason))
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, reason) from None

    def _register(self, pump: Pump, path: str, started: float) -> None:
        relay = self.relay
        relay.registry.add(pump)
        relay.metrics.channel_opened(time.monotonic() - started)
        if log.isEnabledFor(logging.INFO):  # per connection: skip building the fields
            log.info("connection_opened",
                     extra=self._extra(conn_id=pump.conn_id, socket_path=path, user=self.user))

    def _target_end(self, pump: Pump) -> Callable[[], TransportEnd]:
        buffer_size = self.relay.config.buffer_size
        return lambda: TransportEnd(pump, TARGET, buffer_size)

    async def _adopt_target(self, pump: Pump, sock: socket.socket) -> None:
        try:
            await _adopt(self._target_end(pump), sock)
        except Exception as exc:  # whatever failed, the confirmed channel must end, not hang
            pump.close(f"target error: {exc}", abort=True)

    async def _open_when_accepted(self, path: str, started: float) -> ChannelEnd:
        """Retry a target whose listen queue is full until it accepts (or the wait runs out).

        A non-blocking Unix connect to a full queue fails with EAGAIN and leaves nothing in
        progress to wait on (the socket polls writable at once while still unconnected), so
        the connect is retried, 1 ms apart at first, then up to 50 ms.
        """
        relay = self.relay
        delay = 0.001
        try:
            async with asyncio.timeout(relay.config.max_request_wait_time):
                while (sock := connect_now(path)) is None:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.05)
        except (OSError, TimeoutError) as exc:
            self._target_failed(path, exc)
        finally:
            relay.registry.end_open()
        relay.state.socket_reached(path)
        if self.lost:
            sock.close()
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "SSH connection closed")
        pump = Pump(relay.registry.new_id(), path)
        try:
            await _adopt(self._target_end(pump), sock)
        except OSError as exc:
            self._target_failed(path, exc)
        if self.lost:
            # The SSH connection dropped while the target socket was being wrapped: asyncssh
            # will never attach this channel's session, so nothing would ever close the
            # target (and, registered, it would count as active forever).
            pump.close("SSH connection closed while connecting the target", abort=True)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "SSH connection closed")
        pump.on_finished = relay.finished
        self._register(pump, path, started)
        return ChannelEnd(pump, CLIENT)

