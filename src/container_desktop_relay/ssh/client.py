"""Client role: local endpoints → one SSH link → a direct-streamlocal channel per connection.

Theory of operation:

* The client has one or more *forwards* (:mod:`~container_desktop_relay.ssh.forwards`), each a
  local endpoint paired with a remote socket; it listens on every local endpoint.
* One SSH connection (the *link*) carries every local connection as its own channel. Each
  accepted connection is a :class:`TransportEnd` of a new :class:`Pump` whose channel is
  opened at once; the channel becomes the pump's other side once confirmed, and what the
  local client sends meanwhile is held (past ``HOLD_LIMIT`` its reader is paused).
* Start-up: listen, spawn the server when asked, then connect with up to ``max_retries``
  attempts (each bounded by ``ssh_timeout``, delays from :class:`Backoff`). Host-key problems
  and a refused key end the start-up at once; they will not fix themselves.
* Once linked, a probe channel to every forward's remote socket must open before the role is
  ready; a forward whose socket is missing is reported by name and probed again, while the
  other forwards serve connections.
* When the link is lost, every forwarded connection on it is closed, the role turns not
  ready, and a background loop reconnects with the same backoff. A local connection accepted
  while the link is down waits up to ``ssh_timeout`` for it, then is closed with a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import itertools
import logging
import time
from collections.abc import Callable

import asyncssh

from container_desktop_relay.config import Config
from container_desktop_relay.core.backoff import Backoff, worth_logging
from container_desktop_relay.core.ends import ChannelEnd, TransportEnd
from container_desktop_relay.core.idle import sweep_idle
from container_desktop_relay.core.pump import CLIENT, TARGET, Pump
from container_desktop_relay.endpoints import Endpoint, Listener, open_listener
from container_desktop_relay.errors import (
    SERVER_DRAINING,
    AuthenticationRefused,
    ConfigError,
    HostKeyMismatch,
    KeyFileError,
    RelayError,
    TunnelUnavailable,
)
from container_desktop_relay.fixes import gave_up, spawn_command
from container_desktop_relay.log import get_logger
from container_desktop_relay.observability.metrics import Metrics, account_finished
from container_desktop_relay.runtime.spawn import ServerProcess
from container_desktop_relay.runtime.state import SERVER_UNAVAILABLE, RoleState
from container_desktop_relay.ssh import tune as sshtune
from container_desktop_relay.ssh.forwards import Forward, client_forwards
from container_desktop_relay.ssh.hostkeys import HostKeyPolicy, host_key_algs
from container_desktop_relay.ssh.keys import load_private_key
from container_desktop_relay.ssh.url import DEFAULT_REMOTE_SOCKET, SSHTarget, parse_ssh_url

__all__ = ["RelayClient", "resolve_target"]

log = get_logger(__name__)
_conn_ids = itertools.count(1)


def resolve_target(config: Config) -> SSHTarget:
    """The SSH server and remote socket: ``--ssh-connection``, else ``--host``/``--port``.

    Raises:
        ConfigError: a malformed ``--ssh-connection``.
    """
    if config.ssh_connection:
        return parse_ssh_url(config.ssh_connection, default_port=config.port)
    return SSHTarget(getpass.getuser(), config.host, config.port, DEFAULT_REMOTE_SOCKET)


def _reason(exc: BaseException) -> str:
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
        self.lost_reason = _reason(exc) if exc is not None else "closed by the server"


class RelayClient:
    """The client role: local listener + SSH link + per-connection pumps + reconnection."""

    def __init__(self, config: Config, metrics: Metrics, state: RoleState, *,
                 backoff: Backoff | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.state = state
        self.target = resolve_target(config)
        if config.forward:  # each forward names its socket; logs name the server only
            self.target = dataclasses.replace(self.target, socket_path="")
        #: every local endpoint and the remote socket it reaches (the single form is one)
        self.forwards: list[Forward] = client_forwards(config)
        self.endpoint: Endpoint = self.forwards[0].endpoint
        if bool(config.distribution) != bool(config.relay_program_path):
            raise ConfigError(
                "invalid distribution/relay_program_path: spawning the server needs both "
                "--distribution and --relay-program-path"
            )
        self.spawning = bool(config.distribution)
        self.backoff = backoff or Backoff()
        self.conn: asyncssh.SSHClientConnection | None = None
        self.link = asyncio.Event()
        self.spawner: ServerProcess | None = None
        self.policy: HostKeyPolicy | None = None
        self.connects = 0
        self._identity: asyncssh.SSHKey | None = None
        self._listeners: list[Listener] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._linked: set[Pump] = set()
        self._forward_of: dict[Pump, Forward] = {}
        self._idle = asyncio.Event()
        self._closing = False
        #: readiness probe channels open now
        self.probing = 0

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Listen, spawn the server when configured, and connect the SSH link.

        Raises:
            KeyFileError: the identity key is missing or unsafe; known_hosts unreadable.
            ListenError: the local endpoint cannot be used.
            TunnelError: the link cannot be established within ``max_retries`` attempts,
                or the host key or client key was refused.
        """
        config = self.config
        sshtune.apply(config.asyncssh_patches)
        identity_path = config.path("identity_path")
        self._identity = load_private_key(identity_path)
        self.policy = HostKeyPolicy(
            config.path("known_hosts_path"),
            secure=config.secure_host_key,
            expected=self._identity if self.spawning else None,
            expected_source=f"--identity-path {identity_path}",
        )
        try:
            for fwd in self.forwards:
                self._listeners.append(await open_listener(
                    fwd.endpoint, self._acceptor(fwd), buffer_size=config.buffer_size))
            if self.spawning:
                self.spawner = ServerProcess(config, on_unavailable=self._server_unavailable)
                await self.spawner.start()
                listening = await self.spawner.wait_listening(config.ssh_timeout)
                if not listening and not self.spawner.exit_codes:
                    log.warning("server_not_listening_yet",
                                extra={"waited_s": config.ssh_timeout})
            conn = await self._connect_at_start()
        except BaseException:
            await self.aclose()
            raise
        self._link_up(conn)
        self._supervisor = asyncio.create_task(self._supervise(conn), name="ssh-link")
        self._sweeper = asyncio.create_task(
            sweep_idle(lambda: self.metrics.active, config.read_timeout, config.write_timeout),
            name="idle-sweeper",
        )

    def stop_accepting(self) -> None:
        """Stop listening (socket files are removed); forwarded connections go on."""
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.close()

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` for forwarded connections to finish; returns how many remain."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.metrics.active:
                    self._idle = asyncio.Event()
                    await self._idle.wait()
        return len(self.metrics.active)

    def close_all(self) -> None:
        """Close every forwarded connection, the SSH link and the spawned server, now."""
        self._closing = True
        self.stop_accepting()
        for task in list(self._handlers):
            task.cancel()
        for pump in list(self.metrics.active):
            pump.close("shutdown", abort=True)
        for link_task in (self._supervisor, self._sweeper):
            if link_task is not None:
                link_task.cancel()
        if self.conn is not None:
            self.conn.close()
        if self.spawner is not None:
            self.spawner.terminate()

    async def aclose(self) -> None:
        """:meth:`close_all`, then wait for the link to close and the server to exit."""
        self.close_all()
        tasks = [t for t in (*self._handlers, self._supervisor, self._sweeper) if t is not None]
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
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

    # -------------------------------------------------------------- the link
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
                conn = await asyncssh.connect(
                    target.host,
                    target.port,
                    username=target.user,
                    client_factory=lambda: client,
                    client_keys=[self._identity],
                    known_hosts=(trusted, cas, revoked),
                    server_host_key_algs=host_key_algs(trusted, certificates=certs),
                    agent_path=None,
                    config=None,
                    preferred_auth="publickey",
                    x509_trusted_certs=None,
                    encryption_algs=sshtune.preferred_ciphers(),
                    compression_algs=["none"],
                    keepalive_interval=config.keepalive_interval,
                    keepalive_count_max=config.keepalive_count_max,
                    rekey_bytes=config.rekey_limit,
                )
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
            raise TunnelUnavailable(f"cannot connect to {where}: {_reason(exc)}") from None
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
        self.link.set()
        log.info("ssh_link_up", extra={"remote": str(self.target), "connects": self.connects})

    def _link_down(self, conn: asyncssh.SSHClientConnection) -> None:
        client = conn.get_extra_info("cdr_client")
        reason = client.lost_reason if isinstance(client, _SSHClient) else "closed"
        self.link.clear()
        self.conn = None
        self.state.link_up = False
        self.state.set_not_ready(f"SSH link down: {reason}")
        if not self._closing:
            log.error("ssh_link_down", extra={"remote": str(self.target), "reason": reason})
            self.metrics.error("connection", f"SSH link to {self.target} lost: {reason}")
        for pump in list(self._linked):  # cut off: never a clean end of stream
            pump.close(f"SSH link lost: {reason}", abort=True)

    async def _supervise(self, conn: asyncssh.SSHClientConnection) -> None:
        """Probe, serve until the link drops, reconnect; forever (cancelled on close)."""
        while True:
            await self._probe_until_ready(conn)
            await conn.wait_closed()
            self._link_down(conn)
            if self._closing:
                return
            conn = await self._reconnect()
            self._link_up(conn)

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
                if not failed:
                    self.state.set_ready("linked")
                    log.info("client_ready", extra={
                        "remote": str(self.target), "endpoint": str(self.endpoint),
                        "forwards": [str(fwd) for fwd in self.forwards]})
                    return
                for fwd, error in failed:
                    log.warning("probe_failed", extra={"remote": str(self.target),
                                                       "forward": fwd.name,
                                                       "socket_path": fwd.remote,
                                                       "error": error})
                self.state.set_not_ready("remote socket unreachable: " + "; ".join(
                    self._probe_reason(fwd, error) for fwd, error in failed))
                pending = [fwd for fwd, _ in failed]
                await asyncio.wait({closed}, timeout=backoff.next())
        finally:
            closed.cancel()

    def _probe_reason(self, fwd: Forward, error: str) -> str:
        """The /ready reason part for a failed probe (named only when there are several)."""
        return error if len(self.forwards) == 1 else f"{fwd.name} ({fwd.remote}): {error}"

    async def probe(self, conn: asyncssh.SSHClientConnection,
                    path: str | None = None) -> str | None:
        """Open and close a channel to ``path`` (default: the first forward's remote socket);
        None when it worked, else why not.

        While it is open the probe counts against ``max_connections`` (the server counts it).
        """
        self.probing += 1
        try:
            async with asyncio.timeout(self.config.ssh_timeout):
                chan, _ = await conn.create_unix_connection(
                    asyncssh.SSHUNIXSession, path or self.forwards[0].remote
                )
                chan.close()
                await chan.wait_closed()
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            return _reason(exc)
        finally:
            self.probing -= 1
        return None

    # ------------------------------------------------------- local connections
    def _acceptor(self, fwd: Forward) -> Callable[[], asyncio.Protocol]:
        """The protocol factory of ``fwd``'s listener."""
        return lambda: self._accept(fwd)

    def _accept(self, fwd: Forward) -> asyncio.Protocol:
        """A new end for a connection to ``fwd``'s endpoint, its channel opening right away."""
        config = self.config
        pump = Pump(f"c-{next(_conn_ids)}", fwd.remote, self._finished)
        self._forward_of[pump] = fwd
        end = TransportEnd(pump, CLIENT, config.buffer_size)
        self.metrics.connection_started(pump, fwd.name, admitted=False)
        conn = self.conn
        if self._closing:
            self._refuse(pump, "shutting down")
        elif len(self.metrics.active) + self.probing > config.max_connections:
            # The readiness probe is a channel the server counts too: with equal limits on
            # both roles, nothing this role admits may be refused there.
            self._refuse(pump, f"connection pool exhausted (max: {config.max_connections})")
        elif self.link.is_set() and conn is not None:
            self._open_channel(pump, conn)
        else:
            self._wait_for_link(pump)
        return end

    async def _open_when_linked(self, pump: Pump) -> None:
        """Wait up to ``ssh_timeout`` for the SSH link, then open ``pump``'s channel."""
        timeout = self.config.ssh_timeout
        log.info("connection_waiting_for_link", extra={"conn_id": pump.conn_id,
                                                       "timeout_s": timeout})
        try:
            async with asyncio.timeout(timeout):
                await self.link.wait()
        except TimeoutError:
            self._refuse(pump, f"SSH link to {self.target.host}:{self.target.port} not "
                               f"available within {timeout:g}s ({self.state.reason})")
            return
        conn = self.conn
        if pump.closing or conn is None:
            pump.close("client closed before the channel opened")
            return
        self._open_channel(pump, conn)

    def _wait_for_link(self, pump: Pump) -> None:
        """Open ``pump``'s channel once the (next) link is ready, waiting up to ``ssh_timeout``."""
        task = asyncio.create_task(self._open_when_linked(pump), name="local-connection")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    def _open_channel(self, pump: Pump, conn: asyncssh.SSHClientConnection) -> None:
        """Open ``pump``'s channel; the pump's target side is attached once it is confirmed."""
        path = pump.target
        started = time.monotonic()

        def failed(error: BaseException) -> None:
            if pump.closing:  # already ended (client gone, shutting down)
                return
            if not self._retry_elsewhere(pump, conn, error):
                self._refuse(pump, f"channel open to {path} failed: {_reason(error)}")

        def opened(error: BaseException | None) -> None:
            if error is not None:
                # Decided one loop pass later: an open failed by the link dropping fails
                # while asyncssh is still closing the connection (is_closed() not yet true).
                asyncio.get_running_loop().call_soon(failed, error)
                return
            self.metrics.channel_opened(time.monotonic() - started)
            if pump.closing:
                return
            self.metrics.connection_admitted(pump)
            self._linked.add(pump)
            if log.isEnabledFor(logging.INFO):  # per connection: skip building the fields
                fwd = self._forward_of.get(pump)
                log.info("connection_opened", extra={
                    "conn_id": pump.conn_id, "socket_path": path,
                    "endpoint": fwd.name if fwd is not None else str(self.endpoint)})

        try:
            sshtune.open_unix_channel(conn, path, lambda: ChannelEnd(pump, TARGET), opened)
        except (OSError, asyncssh.Error) as exc:
            self._refuse(pump, f"channel open to {path} failed: {_reason(exc)}")

    def _retry_elsewhere(self, pump: Pump, conn: asyncssh.SSHClientConnection,
                         error: BaseException) -> bool:
        """Whether a failed channel open is retried on the next link (nothing reached the
        target): the link dropped while it was in flight, or the server is draining."""
        if self._closing:
            return False
        if isinstance(error, asyncssh.ChannelOpenError) and error.reason == SERVER_DRAINING:
            self._server_draining(conn)
        elif not conn.is_closed():
            return False
        elif self.conn is conn:
            self.link.clear()  # the supervisor has yet to notice: wait for the next link
        log.info("connection_retried", extra={"conn_id": pump.conn_id,
                                              "reason": _reason(error)})
        self._wait_for_link(pump)
        return True

    def _server_draining(self, conn: asyncssh.SSHClientConnection) -> None:
        """The server refused a channel because it is shutting down: stop using this link
        for new connections and stop being ready until the next link is (the live ones go
        on; the server closes the link once they are done)."""
        if self.conn is not conn or not self.link.is_set():
            return
        self.link.clear()
        self.state.set_not_ready("server is shutting down")
        log.warning("server_draining", extra={"remote": str(self.target)})

    def _refuse(self, pump: Pump, reason: str) -> None:
        self.metrics.error("connection", f"{pump.conn_id}: {reason}")
        log.warning("connection_refused", extra={"conn_id": pump.conn_id, "reason": reason})
        pump.refuse(reason)

    def _finished(self, pump: Pump) -> None:
        """A pump ended: account and log it once."""
        self._linked.discard(pump)
        fwd = self._forward_of.pop(pump, None)
        account_finished(self.metrics, pump, log, fwd.name if fwd is not None else "")
        if not self.metrics.active:
            self._idle.set()
