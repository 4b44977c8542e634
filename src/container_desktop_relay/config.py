"""The one typed configuration: defaults < JSON config file < environment < flags, validated once.

Every key is declared once here, as a field of :class:`Config` with an :class:`Option` in its
metadata. The CLI builds its flags from these declarations, the loader reads the file and the
environment through them, and docs/configuration.md is generated from them.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from container_desktop_relay.durations import format_duration, parse_duration
from container_desktop_relay.errors import ConfigError

__all__ = [
    "LOG_LEVELS",
    "Config",
    "Option",
    "Source",
    "allowed_values",
    "config_fields",
    "derived_port",
    "load_config",
]

LOG_LEVELS = ("trace", "debug", "info", "warn", "error")
ENV_PREFIX = "CDR_"


@dataclass(frozen=True, slots=True)
class Option:
    """How one configuration key is spelled, typed, checked and documented."""

    help: str
    kind: str  # str | int | bool | duration | path | list
    roles: tuple[str, ...] = ("server", "client")
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    zero_disables: bool = False
    env: str | None = None  # extra, unprefixed environment variable (LOG_LEVEL)
    metavar: str | None = None
    any_case: bool = False  # a choice may be given in any case ("INFO")
    aliases: tuple[tuple[str, str], ...] = ()  # other names of a choice: ("warning", "warn")


def _opt(default: Any, help: str, kind: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default),
                     metadata={"cdr": Option(help, kind, **kw)})
    return field(default=default, metadata={"cdr": Option(help, kind, **kw)})


SERVER = ("server",)
CLIENT = ("client",)
BOTH = ("server", "client")


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Every setting of both roles. Durations are float seconds; 0 disables where noted."""

    # --- common ---
    host: str = _opt("127.0.0.1", "SSH server address: the server (and a server the client "
                     "spawns) binds it", "str", roles=BOTH)
    port: int = _opt(20022, "SSH server TCP port; the client uses it when --ssh-connection "
                     "names no port, and refuses a different port there", "int", minimum=1,
                     maximum=65535)
    buffer_size: int = _opt(8192, "bytes a forwarded connection may queue per direction before "
                            "its reader is paused (the per-connection memory bound)", "int",
                            minimum=1024, maximum=64 * 1024 * 1024)
    identity_path: str = _opt("~/.ssh/id_rsa", "SSH private key shared by client and server "
                              "(its public half is always authorized by the server)", "path")
    known_hosts_path: str = _opt("~/.ssh/known_hosts", "known_hosts file the client pins the "
                                 "server's host key in", "path", roles=CLIENT)
    authorized_keys_path: str = _opt("~/.ssh/authorized_keys", "authorized_keys file (OpenSSH "
                                     "format), re-read on every connection", "path")
    generate_key_pair: bool = _opt(False, "create the RSA 4096 key pair if missing, add it to "
                                   "authorized_keys, then run on", "bool")
    secure_host_key: bool = _opt(False, "client: refuse a server whose host key is not already "
                                 "in known_hosts (otherwise trust on first use)", "bool",
                                 roles=CLIENT)
    max_connections: int = _opt(100, "most forwarded connections open at once; more are "
                                "refused with 'connection pool exhausted'", "int", minimum=1,
                                maximum=1_000_000)
    connect_timeout: float = _opt(10.0, "server: time a new SSH client has to finish handshake "
                                  "and authentication (login grace time)", "duration",
                                  roles=SERVER, minimum=0.001)
    read_timeout: float = _opt(0.0, "close a forwarded connection after this long with no bytes "
                               "moving in either direction, read or taken by a peer "
                               "(0 = never)", "duration", minimum=0, zero_disables=True)
    write_timeout: float = _opt(0.0, "close a forwarded connection whose peer has taken none of "
                                "the bytes waiting for it for this long; a slow reader that "
                                "keeps taking bytes is never cut off (0 = never)", "duration",
                                minimum=0, zero_disables=True)
    shutdown_timeout: float = _opt(10.0, "on SIGTERM/SIGINT, how long active connections may "
                                   "finish before they are closed", "duration", minimum=0)
    keepalive_interval: float = _opt(2.0, "SSH keepalive probe interval", "duration",
                                     minimum=0.001)
    keepalive_count_max: int = _opt(3, "unanswered keepalives before the SSH link is declared "
                                    "dead", "int", minimum=1, maximum=1000)
    rekey_limit: int = _opt(1 << 30, "bytes of SSH traffic after which session keys are "
                            "renegotiated (OpenSSH's RekeyLimit)", "int", minimum=65536,
                            maximum=1 << 40)
    health_check_enabled: bool | None = _opt(None, "serve /health and /ready (server default: on, "
                                      "client default: off)", "bool")
    health_check_host: str = _opt("127.0.0.1", "address /health, /ready and /metrics bind to",
                                  "str")
    health_check_port: int | None = _opt(None, "port of /health and /ready (default: the SSH port "
                                         "+ 58 on the server, + 59 on the client, so 20080 and "
                                         "20081 for SSH port 20022; 0 = any free port)", "int",
                                         minimum=0, maximum=65535)
    metrics_enabled: bool | None = _opt(None, "serve /metrics (server default: on, client default: "
                                 "off)", "bool")
    metrics_port: int | None = _opt(None, "port of /metrics (default: the SSH port + 68 on the "
                                    "server, + 69 on the client, so 20090 and 20091 for SSH "
                                    "port 20022; 0 = any free port)", "int", minimum=0,
                                    maximum=65535)
    degraded_threshold: int = _opt(1000, "/health turns 503 'degraded' above this many active "
                                   "connections", "int", minimum=1)
    log_level: str = _opt("debug", "log level", "str", choices=LOG_LEVELS, env="LOG_LEVEL",
                          any_case=True, aliases=(("warning", "warn"),))
    asyncssh_patches: str = _opt("all", "asyncssh patches to apply, for diagnosis: all, "
                                 "correctness (the flow-control fixes only) or none (asyncssh "
                                 "as released: slower, and memory is not bounded behind a "
                                 "stalled reader); a patch whose asyncssh function changed is "
                                 "skipped either way", "str",
                                 choices=("all", "correctness", "none"))
    # --- server ---
    host_key_path: str = _opt("", "server host key (default: the identity key)", "path",
                              roles=SERVER)
    allow_socket: list[str] = _opt([], "glob of socket paths channels may open (repeatable; "
                                   "none = any absolute path)", "list", roles=SERVER,
                                   metavar="GLOB")
    allowed_users: list[str] = _opt([], "user names allowed to log in (repeatable; none = any "
                                    "name, the key decides)", "list", roles=SERVER,
                                    metavar="USER")
    watch_process_termination: bool = _opt(False, "exit when the parent process is gone",
                                           "bool")
    parent_process_pid: int = _opt(-1, "PID to watch (a Windows PID under WSL; -1 = the real "
                                   "parent)", "int", minimum=-1)
    poll_interval: float = _opt(2.0, "parent-process poll interval (seconds or duration)",
                                "duration", minimum=0.01)
    max_request_wait_time: float = _opt(5.0, "server: how long connecting to the target socket "
                                        "may take before the channel open is refused",
                                        "duration", roles=SERVER, minimum=0.001)
    # --- client ---
    named_pipe: str = _opt("npipe:////./pipe/container-desktop", "local endpoint on Windows",
                           "str", roles=CLIENT)
    listen: str = _opt("", "local endpoint, unix:///path/relay.sock or npipe:////./pipe/NAME "
                       "(overrides --named-pipe)", "str", roles=CLIENT)
    ssh_connection: str = _opt("", "ssh://user@host:port/remote/socket/path (--port and "
                               "/var/run/docker.sock when omitted; with --forward, no path)",
                               "str", roles=CLIENT)
    forward: list[str] = _opt([], "LOCAL=REMOTE: carry local endpoint LOCAL (unix:///path or "
                              "npipe:////./pipe/NAME) to the absolute socket path REMOTE on "
                              "the server (repeatable; replaces --listen/--named-pipe and the "
                              "path of --ssh-connection)", "list", roles=CLIENT,
                              metavar="LOCAL=REMOTE")
    ssh_timeout: float = _opt(5.0, "bound on each SSH connect attempt and on how long a local "
                              "connection waits for the link", "duration", roles=CLIENT,
                              minimum=0.001)
    max_retries: int = _opt(5, "SSH connect attempts at start-up before giving up", "int",
                            minimum=1, roles=CLIENT)
    distribution: str = _opt("", "WSL distribution to spawn the server in", "str",
                             roles=CLIENT)
    relay_program_path: str = _opt("", "Linux relay program that wsl.exe runs as the server",
                                   "str", roles=CLIENT)
    tid_path: str = _opt("", "file that receives 'pid:tid' once the relay is ready", "path",
                         roles=CLIENT)
    # --- not a setting ---
    #: where each key given explicitly came from ("--port", "CDR_PORT", "config file x.json");
    #: keys left at their defaults are absent.
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def source_of(self, key: str) -> str | None:
        """Where ``key`` was set (a flag, variable or config file), or None for its default."""
        return self.sources.get(key)

    def ssh_port(self, role: str) -> int:
        """The SSH port this role's observability ports derive from: the server's own port;
        for the client, the port of ``--ssh-connection`` (else ``--port``)."""
        if role == "client" and self.ssh_connection:
            from container_desktop_relay.ssh.url import parse_ssh_url

            return parse_ssh_url(self.ssh_connection, default_port=self.port).port
        return self.port

    def effective_health_enabled(self, role: str) -> bool:
        """Whether /health and /ready are served for ``role``."""
        if self.health_check_enabled is None:
            return role == "server"
        return bool(self.health_check_enabled)

    def effective_metrics_enabled(self, role: str) -> bool:
        """Whether /metrics is served for ``role``."""
        if self.metrics_enabled is None:
            return role == "server"
        return bool(self.metrics_enabled)

    def effective_health_port(self, role: str) -> int:
        """The /health port for ``role``: when unset, derived from its SSH port."""
        if self.health_check_port is None:
            return derived_port(self.ssh_port(role), HEALTH_OFFSETS[role])
        return int(self.health_check_port)

    def effective_metrics_port(self, role: str) -> int:
        """The /metrics port for ``role``: when unset, derived from its SSH port."""
        if self.metrics_port is None:
            return derived_port(self.ssh_port(role), METRICS_OFFSETS[role])
        return int(self.metrics_port)

    def path(self, key: str) -> Path:
        """The path-valued key ``key`` with ``~`` expanded."""
        value = getattr(self, key)
        return Path(os.path.expanduser(value)) if value else Path()

    def summary(self) -> dict[str, Any]:
        """The configuration as JSON-able values (durations formatted), for logs and doctor."""
        out: dict[str, Any] = {}
        for f, opt in config_fields():
            value = getattr(self, f.name)
            out[f.name] = format_duration(value) if opt.kind == "duration" else value
        return out


#: default observability port = SSH port + offset (20022 gives the spec's 20080 and 20090)
HEALTH_OFFSETS = {"server": 58, "client": 59}
METRICS_OFFSETS = {"server": 68, "client": 69}


def derived_port(ssh_port: int, offset: int) -> int:
    """``ssh_port + offset``; past 65535 it wraps around to 1024 and up."""
    port = ssh_port + offset
    return port if port <= 65535 else 1024 + (port - 65536) % 64512


def config_fields() -> list[tuple[dataclasses.Field[Any], Option]]:
    """Every configuration field with its :class:`Option`, in declaration order."""
    return [(f, f.metadata["cdr"]) for f in dataclasses.fields(Config) if "cdr" in f.metadata]


_FIELDS = {f.name: (f, opt) for f, opt in config_fields()}


@dataclass(frozen=True, slots=True)
class Source:
    """Where a value came from, for error messages ("--port", "CDR_PORT", "config.json")."""

    label: str


_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


def allowed_values(opt: Option) -> str:
    """What ``opt`` accepts, as its errors and the docs say it ("an integer from 1 to 65535")."""
    return _allowed(opt)


def _allowed(opt: Option) -> str:
    if opt.choices:
        notes = ["any case"] if opt.any_case else []
        notes += [f"{alias} means {name}" for alias, name in opt.aliases]
        return "one of " + ", ".join(opt.choices) + (f" ({'; '.join(notes)})" if notes else "")
    if opt.kind == "bool":
        return "true or false"
    if opt.kind == "int":
        lo = "" if opt.minimum is None else f"{int(opt.minimum)}"
        hi = "" if opt.maximum is None else f"{int(opt.maximum)}"
        if lo and hi:
            return f"an integer from {lo} to {hi}"
        if lo:
            return f"an integer >= {lo}"
        return "an integer"
    if opt.kind == "duration":
        text = 'a duration like "5s", "1m30s", "250ms" or a number of seconds'
        if opt.zero_disables:
            return text + " (0 disables)"
        return text + ", greater than 0" if (opt.minimum or 0) > 0 else text + ", 0 or more"
    if opt.kind == "list":
        return "a list of strings"
    return "a string"


#: Keys whose empty value would silently mean their default: what to write instead.
_NOT_EMPTY = {
    "ssh_connection": "ssh://user@host:port/remote/socket/path; leave it out to connect to "
                      "--host and --port",
    "listen": "unix:///path/relay.sock; leave it out to use --named-pipe (Windows)",
}


def _json_type_hint(raw: Any, opt: Option, *, from_text: bool) -> str:
    """Why a config-file value has the wrong JSON type, when quoting is the mistake."""
    if from_text or not isinstance(raw, str):
        return ""
    if opt.kind == "int":
        return "a JSON string: write the number without quotes"
    if opt.kind == "bool":
        return "a JSON string: write true or false without quotes"
    if opt.kind == "list":
        return 'a JSON string: write a list, ["..."]'
    return ""


def _convert(name: str, raw: Any, src: Source, *, from_text: bool) -> Any:
    """Turn ``raw`` (a string from flags/env, or a JSON value) into the key's typed value."""
    _, opt = _FIELDS[name]

    def bad(why: str = "") -> ConfigError:
        shown = raw if isinstance(raw, str) else json.dumps(raw)
        why = why or _json_type_hint(raw, opt, from_text=from_text)
        extra = f" ({why})" if why else ""
        return ConfigError(
            f"invalid {name}={shown!s} from {src.label}{extra}: must be {_allowed(opt)}"
        )

    if raw == "" and name in _NOT_EMPTY:
        raise ConfigError(f"invalid {name}= from {src.label} (empty): must be "
                          f"{_NOT_EMPTY[name]}")

    value: Any
    if opt.kind == "bool":
        if isinstance(raw, bool):
            value = raw
        elif from_text and isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            value = raw.strip().lower() in _TRUE
        else:
            raise bad()
    elif opt.kind == "int":
        if isinstance(raw, bool):
            raise bad()
        if isinstance(raw, int):
            value = raw
        elif from_text and isinstance(raw, str):
            try:
                value = int(raw.strip(), 10)
            except ValueError:
                raise bad() from None
        else:
            raise bad()
    elif opt.kind == "duration":
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise bad()
        try:
            value = parse_duration(raw)
        except ValueError:
            raise bad() from None
    elif opt.kind == "list":
        if isinstance(raw, str):
            value = [raw] if from_text else None
            if value is None:
                raise bad()
        elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            value = list(raw)
        else:
            raise bad()
    else:  # str, path
        if not isinstance(raw, str):
            raise bad()
        value = raw.strip().lower() if opt.any_case else raw
        value = dict(opt.aliases).get(value, value)
    _check_range(name, value, opt, bad)
    return value


def _check_range(name: str, value: Any, opt: Option, bad: Callable[[str], ConfigError]) -> None:
    if opt.choices and value not in opt.choices:
        raise bad("")
    if opt.kind in ("int", "duration"):
        if opt.zero_disables and value == 0:
            return
        if opt.minimum is not None and value < opt.minimum:
            raise bad("too small")
        if opt.maximum is not None and value > opt.maximum:
            raise bad("too large")


def _json_error(path: str, text: str, exc: json.JSONDecodeError) -> str:
    """The one-line message for malformed JSON, naming the usual mistakes by name."""
    before = text[:exc.pos].rstrip()
    if before.endswith(",") and text[exc.pos:exc.pos + 1] in ("}", "]"):
        comma = len(before) - 1
        line = text.count("\n", 0, comma) + 1
        column = comma - (text.rfind("\n", 0, comma) + 1) + 1
        return (f"config file {path} is not valid JSON: trailing comma at line {line} column "
                f"{column}; "
                "remove it (JSON allows no comma before } or ])")  # plain: braces as printed
    if text.startswith(("//", "/*", "#"), exc.pos):
        return (f"config file {path} is not valid JSON: a comment at line {exc.lineno} column "
                f"{exc.colno}; JSON has no comments, remove it")
    if text.startswith("'", exc.pos):
        return (f"config file {path} is not valid JSON: a single quote at line {exc.lineno} "
                f"column {exc.colno}; JSON strings and keys take double quotes")
    return (f"config file {path} is not valid JSON: {exc.msg} at line {exc.lineno} column "
            f"{exc.colno}")


def _suggest(key: str) -> str:
    """``did you mean allow_socket?`` for a misspelt or camelCase key, else where keys are."""
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in key).lstrip("_")
    snake = snake.replace("-", "_")
    if snake in _FIELDS:
        return f"did you mean {snake}? (keys are snake_case)"
    close = difflib.get_close_matches(snake, list(_FIELDS), n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]}?"
    return ("no such setting; every key is listed in docs/configuration.md "
            "(container-desktop-relay config-docs)")


def read_config_file(path: str) -> dict[str, Any]:
    """Read and type-check a JSON config file.

    Raises:
        ConfigError: unreadable file, malformed JSON, a non-object, unknown key or bad value.
    """
    try:
        text = Path(os.path.expanduser(path)).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(_json_error(path, text, exc)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object of settings")
    src = Source(f"config file {path}")
    out: dict[str, Any] = {}
    for key, raw in data.items():
        if key not in _FIELDS:
            raise ConfigError(f"unknown key {key!r} in config file {path}: {_suggest(key)}")
        if raw is None and _FIELDS[key][0].default is None:
            continue
        out[key] = _convert(key, raw, src, from_text=False)
    return out


def env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """Typed values from ``CDR_<KEY>`` variables (and LOG_LEVEL).

    Raises:
        ConfigError: a variable holds an invalid value.
    """
    out: dict[str, Any] = {}
    for name, (_, opt) in _FIELDS.items():
        for var in filter(None, (opt.env, ENV_PREFIX + name.upper())):
            if var in environ and environ[var] != "":
                raw = environ[var]
                if opt.kind == "list":
                    items = [p.strip() for p in raw.split(",") if p.strip()]
                    out[name] = _convert(name, items, Source(var), from_text=True)
                else:
                    out[name] = _convert(name, raw, Source(var), from_text=True)
    return out


def _env_source(name: str, environ: Mapping[str, str]) -> str:
    """The variable that set ``name`` (the CDR_ one wins over an unprefixed alias)."""
    _, opt = _FIELDS[name]
    found = [var for var in filter(None, (opt.env, ENV_PREFIX + name.upper()))
             if environ.get(var, "") != ""]
    return found[-1]


def flag_values(flags: Mapping[str, Any]) -> dict[str, Any]:
    """Typed values from parsed flags (strings as typed on the command line).

    Raises:
        ConfigError: a flag holds an invalid value.
    """
    out: dict[str, Any] = {}
    for name, raw in flags.items():
        if raw is None:
            continue
        flag = "--" + name.replace("_", "-")
        out[name] = _convert(name, raw, Source(flag), from_text=True)
    return out


def load_config(
    flags: Mapping[str, Any] | None = None,
    *,
    config_path: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the validated :class:`Config`: defaults < config file < environment < flags.

    Raises:
        ConfigError: naming the key, the value, where it came from and what is allowed.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    path = config_path or environ.get(ENV_PREFIX + "CONFIG") or None
    if path:
        from_file = read_config_file(path)
        values.update(from_file)
        sources.update(dict.fromkeys(from_file, f"config file {path}"))
    from_env = env_values(environ)
    values.update(from_env)
    sources.update({name: _env_source(name, environ) for name in from_env})
    from_flags = flag_values(flags or {})
    values.update(from_flags)
    sources.update({name: "--" + name.replace("_", "-") for name in from_flags})
    config = Config(**values, sources=sources)
    _cross_check(config)
    return config


def _cross_check(config: Config) -> None:
    for pattern in config.allow_socket:
        if not pattern.startswith("/"):
            raise ConfigError(
                f"invalid allow_socket={pattern}: must be an absolute path or glob starting "
                "with /"
            )
    if config.ssh_connection:
        from container_desktop_relay.ssh.url import parse_ssh_url

        parse_ssh_url(config.ssh_connection, default_port=config.port)
        _check_one_port(config)
    if config.listen:
        from container_desktop_relay.endpoints import parse_endpoint

        parse_endpoint(config.listen)
    if config.forward:
        from container_desktop_relay.ssh.forwards import client_forwards

        client_forwards(config)


def _check_one_port(config: Config) -> None:
    """The client has one SSH port: ``--ssh-connection``'s, else ``port`` (which a server it
    spawns listens on). Both given and different is refused rather than one silently ignored."""
    from container_desktop_relay.ssh.url import explicit_port

    url_port = explicit_port(config.ssh_connection)
    source = config.source_of("port")
    if url_port is None or source is None or url_port == config.port:
        return
    raise ConfigError(
        f"invalid port={config.port} from {source}: ssh_connection={config.ssh_connection} "
        f"names port {url_port}, and the client has one SSH port: give it once (the URL's "
        "port, or --port with a URL without one), or the same port in both"
    )


def iter_keys() -> Iterable[str]:
    """All configuration key names, in declaration order."""
    return list(_FIELDS)
