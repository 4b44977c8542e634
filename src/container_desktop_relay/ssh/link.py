"""The client's SSH link: connect with retries, probe the remote sockets, reconnect when lost.

Theory of operation:

* Start-up: spawn the server when asked, then connect with up to ``max_retries`` attempts
  (each bounded by ``ssh_timeout``, delays from :class:`Backoff`). Host-key problems and a
  refused key end the start-up at once; they will not fix themselves.
* Once linked, a probe channel to every forward's remote socket must open before the role is
  ready; a forward whose socket is missing is reported by name and probed again with backoff
  (logged once, then quietly), while the other forwards serve connections.
* When the link is lost, ``on_down`` hears why (the client closes the connections on it), the
  role turns not ready, and a background loop reconnects with the same backoff. A channel open
  in flight when the link dropped, or refused because the server is draining, reached no
  target: :meth:`SSHLink.retry_on_next` says so, and the client opens it on the next link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncssh

from container_desktop_relay.config import Config
from container_desktop_relay.core.backoff import Backoff, worth_logging
from container_desktop_relay.core.registry import ConnectionRegistry
from container_desktop_relay.errors import (
    SERVER_DRAINING,
    AuthenticationRefused,
    HostKeyMismatch,
    KeyFileError,
    RelayError,
    TunnelUnavailable,
)
from container_desktop_relay.fixes import gave_up, spawn_command
from container_desktop_relay.log import get_logger
from container_desktop_relay.observability.metrics import Metrics
from container_desktop_relay.runtime.spawn import ServerProcess
from container_desktop_relay.runtime.state import SERVER_UNAVAILABLE, RoleState
from container_desktop_relay.ssh import tune as sshtune
from container_desktop_relay.ssh.forwards import Forward
from container_desktop_relay.ssh.hostkeys import HostKeyPolicy, host_key_algs
from container_desktop_relay.ssh.keys import load_private_key
from container_desktop_relay.ssh.options import connect_options
from container_desktop_relay.ssh.url import SSHTarget

__all__ = ["SSHLink", "reason_of"]

log = get_logger(__name__)


def reason_of(exc: BaseException) -> str:
    """A short reason for a failed connect, channel open or probe."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return text or type(exc).__name__


class _SSHClient(asyncssh.SSHClient):
    """asyncssh callbacks of one link: host-key decision and the reason it was lost."""

    def __init__(self, policy: HostKeyPolicy) -> None:
        self.policy = policy
        self.lost_reason = "closed"
        self.accepted: asyncssh.SSHKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int,
                                 key: asyncssh.SSHKey) -> bool:
        # Re-keying asks again: the server must present the key it proved at connect.
        if self.accepted is not None:
            same = key.public_data == self.accepted.public_data
            log.debug("ssh_host_key_rechecked", extra={"host": host, "same": same})
            return same
        if self.policy.check(host, addr, port, key):
            self.accepted = key
            return True
        return False

    def validate_host_ca_key(self, host: str, addr: str, port: int,
                             key: asyncssh.SSHKey) -> bool:
        # Reached only for a CA that no @cert-authority line for this host lists.
        self.policy.refuse_ca(host, port, key)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_reason = reason_of(exc) if exc is not None else "closed by the server"


class SSHLink:
    """One SSH connection to the server at a time, kept up for the client role."""

    def __init__(self, config: Config, state: RoleState, metrics: Metrics,
                 registry: ConnectionRegistry, target: SSHTarget, forwards: list[Forward], *,
                 spawning: bool, on_down: Callable[[str], None],
                 backoff: Backoff | None = None) -> None:
        self.config = config
        self.state = state
        self.metrics = metrics
        self.registry = registry
        self.target = target
        self.forwards = forwards
        self.spawning = spawning
        self.on_down = on_down
        self.backoff = backoff or Backoff()
        #: the connection now (None while down)
        self.conn: asyncssh.SSHClientConnection | None = None
        #: set while a link is up and usable for new channels
        self.up = asyncio.Event()
        self.spawner: ServerProcess | None = None
        self.policy: HostKeyPolicy | None = None
        self.connects = 0
        self.closing = False
        self._identity: asyncssh.SSHKey | None = None
        self._supervisor: asyncio.Task[None] | None = None

    # ------------------------------------------------------------- lifecycle
    def prepare(self) -> None:
        """Load the identity key and the host-key policy (before anything is started).

        Raises:
            KeyFileError: the identity key is missing or unsafe; known_hosts unreadable.
        """
        config = self.config
        identity_path = config.path("identity_path")
        self._identity = load_private_key(identity_path)
        self.policy = HostKeyPolicy(
            config.path("known_hosts_path"),
            secure=config.secure_host_key,
            expected=self._identity if self.spawning else None,
            expected_source=f"--identity-path {identity_path}",
        )

    async def start(self) -> None:
        """Spawn the server when configured, connect, and keep the link up from then on.

        Raises:
            TunnelError: the link cannot be established within ``max_retries`` attempts,
                or the host key or client key was refused.
        """
        config = self.config
        if self.spawning:
            self.spawner = ServerProcess(config, on_unavailable=self._server_unavailable)
            await self.spawner.start()
            listening = await self.spawner.wait_listening(config.ssh_timeout)
            if not listening and not self.spawner.exit_codes:
                log.warning("server_not_listening_yet", extra={"waited_s": config.ssh_timeout})
        conn = await self._connect_at_start()
        self._link_up(conn)
        self._supervisor = asyncio.create_task(self._supervise(conn), name="ssh-link")

    def close(self) -> None:
        """Stop reconnecting, close the link and terminate the spawned server, now."""
        self.closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        if self.conn is not None:
            self.conn.close()
        if self.spawner is not None:
            self.spawner.terminate()

    async def aclose(self) -> None:
        """:meth:`close`, then wait for the link to close and the server to exit."""
        self.close()
        if self._supervisor is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await conn.wait_closed()
        if self.spawner is not None:
            await self.spawner.stop()

    def _server_unavailable(self, reason: str) -> None:
        """The spawned server keeps exiting right after it starts: say so in /ready."""
        self.state.set_not_ready(f"{SERVER_UNAVAILABLE}: {reason}")

    # -------------------------------------------------------------- connecting
    async def _connect_once(self) -> asyncssh.SSHClientConnection:
        """One connection attempt, bounded by ``ssh_timeout``.

        Raises:
            TunnelUnavailable: unreachable, handshake failed, or timed out (worth retrying).
            HostKeyMismatch, HostKeyUnknown, AuthenticationRefused: not worth retrying.
        """
        config, target, policy = self.config, self.target, self.policy
        assert policy is not None and self._identity is not None
        client = _SSHClient(policy)
        trusted = policy.trusted_keys(target.host, target.port)
        cas, revoked = policy.host_cas(target.host, target.port)
        certs = policy.expects_certificate(target.host, target.port)
        where = f"{target.host}:{target.port}"
        try:
            async with asyncio.timeout(config.ssh_timeout):
                conn = await asyncssh.connect(target.host, target.port, **connect_options(
                    config, target, self._identity, known_hosts=(trusted, cas, revoked),
                    server_host_key_algs=host_key_algs(trusted, certificates=certs),
                    client_factory=lambda: client))
        except asyncssh.HostKeyNotVerifiable as exc:
            if policy.refusal is not None:
                raise policy.refusal from None
            if "revoked" in str(exc):
                raise policy.revoked_refusal(target.host, target.port, str(exc)) from None
            raise HostKeyMismatch(f"host key of {where} was refused: {exc}") from None
        except asyncssh.PermissionDenied:
            raise AuthenticationRefused(
                f"{where} refused the key {config.path('identity_path')} for user "
                f"{target.user}; is its public half in the server's authorized_keys?"
            ) from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise TunnelUnavailable(f"cannot connect to {where}: {reason_of(exc)}") from None
        try:
            policy.commit()
        except KeyFileError as exc:
            log.error("host_key_not_recorded", extra={"error": str(exc)})
        sshtune.tune_transport(conn)
        conn.set_extra_info(cdr_client=client)
        return conn

    async def _connect_at_start(self) -> asyncssh.SSHClientConnection:
        """Connect, retrying up to ``max_retries`` attempts in all."""
        attempts = self.config.max_retries
        backoff = self.backoff
        backoff.reset()
        for attempt in range(1, attempts + 1):
            try:
                return await self._connect_once()
            except TunnelUnavailable as exc:
                if attempt == attempts:
                    spawner = self.spawner
                    raise TunnelUnavailable(gave_up(
                        str(exc), attempts, host=self.target.host, port=self.target.port,
                        spawn_command=spawn_command(self.config) if spawner else (),
                        exit_codes=list(spawner.exit_codes) if spawner else (),
                        exits=spawner.exits if spawner else 0,
                    )) from None
                delay = backoff.next()
                log.warning("ssh_connect_retry",
                            extra={"attempt": attempt, "delay_s": round(delay, 3),
                                   "error": str(exc)})
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _reconnect(self) -> asyncssh.SSHClientConnection:
        """Reconnect in the background until it works (or the role closes)."""
        backoff = self.backoff
        backoff.reset()
        attempt = 0
        while True:
            delay = backoff.next()
            await asyncio.sleep(delay)
            attempt += 1
            try:
                return await self._connect_once()
            except RelayError as exc:
                self.metrics.error("connection", str(exc))
                # A long outage (WSL shut down) retries every ~2 s: log the first attempts,
                # then one in 30 (about a minute apart); the rest at debug.
                if not isinstance(exc, TunnelUnavailable):
                    level = logging.ERROR
                elif worth_logging(attempt):
                    level = logging.WARNING
                else:
                    level = logging.DEBUG
                log.log(level, "ssh_reconnect_failed",
                        extra={"attempt": attempt, "error": str(exc), "delay_s": round(delay, 3)})

    def _link_up(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn
        self.connects += 1
        self.state.link_up = True
        self.state.set_not_ready("probing remote socket")
        self.up.set()
        log.info("ssh_link_up", extra={"remote": str(self.target), "connects": self.connects})

    def _link_down(self, conn: asyncssh.SSHClientConnection) -> None:
        client = conn.get_extra_info("cdr_client")
        reason = client.lost_reason if isinstance(client, _SSHClient) else "closed"
        self.up.clear()
        self.conn = None
        self.state.link_up = False
        self.state.set_not_ready(f"SSH link down: {reason}")
        if not self.closing:
            log.error("ssh_link_down", extra={"remote": str(self.target), "reason": reason})
            self.metrics.error("connection", f"SSH link to {self.target} lost: {reason}")
        self.on_down(reason)

    async def _supervise(self, conn: asyncssh.SSHClientConnection) -> None:
        """Probe, serve until the link drops, reconnect; forever (cancelled on close)."""
        while True:
            await self._probe_until_ready(conn)
            await conn.wait_closed()
            self._link_down(conn)
            if self.closing:
                return
            conn = await self._reconnect()
            self._link_up(conn)

    # -------------------------------------------------------------- probing
    async def _probe_until_ready(self, conn: asyncssh.SSHClientConnection) -> None:
        """Probe every forward's remote socket until all opened (ready) or the link closes.

        Forwards whose probe failed are named in the log and in /ready's reason, and probed
        again; the others serve connections meanwhile.
        """
        backoff = Backoff(rng=self.backoff.rng)
        closed = asyncio.ensure_future(conn.wait_closed())
        pending = list(self.forwards)
        try:
            while not closed.done():
                errors = await asyncio.gather(*(self.probe(conn, fwd.remote) for fwd in pending))
                failed = [(fwd, error) for fwd, error in zip(pending, errors, strict=True)
                          if error is not None]
                for fwd, error in zip(pending, errors, strict=True):
                    if error is None:
                        self.state.socket_reached(fwd.remote)
                if not failed:
                    self.state.set_ready("linked")
                    log.info("client_ready", extra={
                        "remote": str(self.target), "endpoint": str(self.forwards[0].endpoint),
                        "forwards": [str(fwd) for fwd in self.forwards]})
                    return
                for fwd, error in failed:  # logged once, then quietly while it stays so
                    news = self.state.socket_failed(fwd.remote, error)
                    log.log(logging.WARNING if news else logging.DEBUG, "probe_failed", extra={
                        "remote": str(self.target), "forward": fwd.name,
                        "socket_path": fwd.remote, "error": error})
                self.state.set_not_ready("remote socket unreachable: " + "; ".join(
                    self._probe_reason(fwd, error) for fwd, error in failed))
                pending = [fwd for fwd, _ in failed]
                await asyncio.wait({closed}, timeout=backoff.next())
        finally:
            closed.cancel()

    def _probe_reason(self, fwd: Forward, error: str) -> str:
        """The /ready reason part for a failed probe (named only when there are several)."""
        return error if len(self.forwards) == 1 else f"{fwd.name} ({fwd.remote}): {error}"

    async def probe(self, conn: asyncssh.SSHClientConnection, path: str) -> str | None:
        """Open and close a channel to ``path``; None when it worked, else why not.

        While it is open the probe holds a slot of ``max_connections`` (the server counts it).
        """
        with self.registry.reserve():
            try:
                async with asyncio.timeout(self.config.ssh_timeout):
                    chan, _ = await conn.create_unix_connection(asyncssh.SSHUNIXSession, path)
                    chan.close()
                    await chan.wait_closed()
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                return reason_of(exc)
        return None

    # -------------------------------------------------------------- channel opens
    def retry_on_next(self, conn: asyncssh.SSHClientConnection, error: BaseException) -> bool:
        """Whether a channel open on ``conn`` that failed with ``error`` reached no target and
        should wait for the next link: ``conn`` dropped while it was in flight, or the server
        refused it because it is draining (then ``conn`` takes no new channels either)."""
        if self.closing:
            return False
        if isinstance(error, asyncssh.ChannelOpenError) and error.reason == SERVER_DRAINING:
            self._server_draining(conn)
            return True
        if not conn.is_closed():
            return False
        if self.conn is conn:
            self.up.clear()  # the supervisor has yet to notice: wait for the next link
        return True

    def _server_draining(self, conn: asyncssh.SSHClientConnection) -> None:
        """The server refused a channel because it is shutting down: stop using this link
        for new connections and stop being ready until the next link is (the live ones go
        on; the server closes the link once they are done)."""
        if self.conn is not conn or not self.up.is_set():
            return
        self.up.clear()
        self.state.set_not_ready("server is shutting down")
        log.warning("server_draining", extra={"remote": str(self.target)})
