"""Configuration: precedence, spellings, validation messages, the spec's own examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from container_desktop_relay.commands.args import ArgumentError
from container_desktop_relay.commands.registry import find, parse_config
from container_desktop_relay.config import (
    Option,
    config_fields,
    derived_port,
    env_values,
    load_config,
)
from container_desktop_relay.errors import ConfigError

SPEC_CONFIG = {
    "host": "127.0.0.1",
    "port": 20022,
    "buffer_size": 8192,
    "max_connections": 100,
    "connect_timeout": "5s",
    "health_check_enabled": True,
    "health_check_port": 20080,
    "metrics_enabled": True,
    "metrics_port": 20090,
    "secure_host_key": True,
}
SPEC_TUNING = {
    "buffer_size": 16384,
    "max_connections": 200,
    "read_timeout": "60s",
    "write_timeout": "60s",
}


def write(tmp_path: Path, data: object) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def test_defaults_match_the_spec() -> None:
    """Defaults are the spec's: 127.0.0.1:20022, 8192 buffer, debug logs, 2 s poll."""
    c = load_config({}, environ={})
    assert (c.host, c.port, c.buffer_size, c.log_level) == ("127.0.0.1", 20022, 8192, "debug")
    assert c.poll_interval == 2 and c.max_request_wait_time == 5 and c.ssh_timeout == 5
    assert c.max_retries == 5 and c.parent_process_pid == -1
    assert c.named_pipe == "npipe:////./pipe/container-desktop"
    assert c.effective_health_enabled("server") and not c.effective_health_enabled("client")
    assert c.effective_health_port("server") == 20080
    assert c.effective_metrics_port("client") == 20091


def test_default_observability_ports_follow_the_ssh_port() -> None:
    """Unset health/metrics ports derive from the SSH port, so two servers never share them."""
    a = load_config({"port": "20022"}, environ={})
    b = load_config({"port": "30022"}, environ={})
    assert (a.effective_health_port("server"), a.effective_metrics_port("server")) == (
        20080, 20090)
    assert (b.effective_health_port("server"), b.effective_metrics_port("server")) == (
        30080, 30090)
    client = load_config({"ssh_connection": "ssh://u@h:30022/x.sock"}, environ={})
    assert (client.effective_health_port("client"), client.effective_metrics_port("client")) \
        == (30081, 30091)
    assert derived_port(65500, 58) == 1024 + 22 and derived_port(65477, 58) == 65535


def test_sources_name_where_each_key_came_from(tmp_path: Path) -> None:
    """Config knows which keys were set, and by which flag, variable or file."""
    path = write(tmp_path, {"metrics_port": 1234, "port": 2000})
    c = load_config({"health_check_port": "4321"}, config_path=path,
                    environ={"CDR_PORT": "2222", "LOG_LEVEL": "info"})
    assert c.source_of("health_check_port") == "--health-check-port"
    assert c.source_of("metrics_port") == f"config file {path}"
    assert c.source_of("port") == "CDR_PORT"
    assert c.source_of("log_level") == "LOG_LEVEL"
    assert c.source_of("host") is None


def test_spec_examples_load_unchanged(tmp_path: Path) -> None:
    """The spec's config.json and tuning example are accepted with their meaning."""
    c = load_config({}, config_path=write(tmp_path, SPEC_CONFIG), environ={})
    assert c.connect_timeout == 5 and c.secure_host_key is True and c.metrics_port == 20090
    t = load_config({}, config_path=write(tmp_path, SPEC_TUNING), environ={})
    assert (t.buffer_size, t.max_connections, t.read_timeout, t.write_timeout) == (
        16384, 200, 60, 60)


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    """flags > CDR_* env > config file > defaults, key by key."""
    path = write(tmp_path, {"port": 1111, "buffer_size": 4096, "max_connections": 7})
    env = {"CDR_PORT": "2222", "CDR_BUFFER_SIZE": "5000"}
    c = load_config({"port": "3333"}, config_path=path, environ=env)
    assert (c.port, c.buffer_size, c.max_connections, c.host) == (3333, 5000, 7, "127.0.0.1")


def test_log_level_env_and_cdr_config_env(tmp_path: Path) -> None:
    """LOG_LEVEL is honoured, and CDR_CONFIG names the config file."""
    path = write(tmp_path, {"port": 4444})
    c = load_config({}, environ={"LOG_LEVEL": "WARN", "CDR_CONFIG": path})
    assert c.log_level == "warn" and c.port == 4444


@pytest.mark.parametrize("given", ["INFO", "Info", "info"])
def test_log_level_any_case_everywhere(tmp_path: Path, given: str) -> None:
    """--log-level takes what LOG_LEVEL takes, in any case; so do CDR_LOG_LEVEL and the file."""
    assert parse_config("server", ["--log-level", given], environ={}).log_level == "info"
    assert load_config({}, environ={"CDR_LOG_LEVEL": given}).log_level == "info"
    path = write(tmp_path, {"log_level": given})
    assert load_config({}, config_path=path, environ={}).log_level == "info"


@pytest.mark.parametrize("given", ["warning", "WARNING", "warn"])
def test_warning_means_warn_everywhere(tmp_path: Path, given: str) -> None:
    """'warning' is another name of warn: as a flag, in LOG_LEVEL and in the config file."""
    assert parse_config("client", [f"-log-level={given}"], environ={}).log_level == "warn"
    assert load_config({}, environ={"LOG_LEVEL": given}).log_level == "warn"
    path = write(tmp_path, {"log_level": given})
    assert load_config({}, config_path=path, environ={}).log_level == "warn"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--port", "2000"], 2000),
        (["--port=2001"], 2001),
        (["-port", "2002"], 2002),
        (["-port=2003"], 2003),
    ],
)
def test_flag_spellings(argv: list[str], expected: int) -> None:
    """--flag v, --flag=v, -flag v and -flag=v all work."""
    assert parse_config("server", argv, environ={}).port == expected


def test_boolean_flags_go_style() -> None:
    """A bare boolean flag means true; =false and =true work as in Go."""
    c = parse_config("server", ["-watch-process-termination", "--health-check-enabled=false"],
                     environ={})
    assert c.watch_process_termination is True and c.health_check_enabled is False
    c = parse_config("client", ["-secure-host-key=false"], environ={})
    assert c.secure_host_key is False
    c = parse_config("client", ["--generate-key-pair=true"], environ={})
    assert c.generate_key_pair is True


def test_repeatable_allow_socket() -> None:
    """--allow-socket repeats; CDR_ALLOW_SOCKET takes a comma list."""
    c = parse_config("server", ["--allow-socket", "/run/*.sock", "--allow-socket=/a"],
                     environ={})
    assert c.allow_socket == ["/run/*.sock", "/a"]
    c = load_config({}, environ={"CDR_ALLOW_SOCKET": "/x.sock,/y/*.sock"})
    assert c.allow_socket == ["/x.sock", "/y/*.sock"]


def test_durations_accept_go_strings_and_seconds() -> None:
    """Durations take "1m30s", "250ms" or plain seconds."""
    c = parse_config("server", ["--shutdown-timeout", "1m30s", "--poll-interval", "250ms",
                                "--max-request-wait-time", "3"], environ={})
    assert (c.shutdown_timeout, c.poll_interval, c.max_request_wait_time) == (90, 0.25, 3)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"port": "0"}, "invalid port=0 from --port (too small): must be an integer from 1 to"),
        ({"port": "65536"}, "invalid port=65536"),
        ({"port": "http"}, "must be an integer from 1 to 65535"),
        ({"buffer_size": "1023"}, "invalid buffer_size=1023"),
        ({"max_connections": "0"}, "invalid max_connections=0"),
        ({"poll_interval": "-1s"}, "invalid poll_interval=-1s"),
        ({"ssh_timeout": "soon"}, 'a duration like "5s"'),
        ({"log_level": "loud"}, "one of trace, debug, info, warn, error"),
        ({"secure_host_key": "maybe"}, "true or false"),
        ({"allow_socket": ["run/x.sock"]}, "absolute path"),
        ({"ssh_connection": "http://x"}, "ssh://user@host:port"),
    ],
)
def test_bad_values_name_key_value_and_allowed(flags: dict[str, object], message: str) -> None:
    """Every bad value is one line naming the key, the value and what is allowed."""
    with pytest.raises(ConfigError) as err:
        load_config(flags, environ={})
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert err.value.exit_code == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ({"prot": 1}, "unknown key 'prot'"),
        ({"port": "20022"}, "invalid port=20022 from config file"),
        ({"buffer_size": True}, "invalid buffer_size=true"),
        ({"read_timeout": "1x"}, "invalid read_timeout=1x"),
        ({"allow_socket": "/one"}, "a list of strings"),
        ({"allow_socket": 5}, "a list of strings"),
        ({"allow_socket": ["/one", 5]}, "a list of strings"),
        ({"read_timeout": [1]}, "invalid read_timeout=[1]"),
        ({"read_timeout": {"s": 1}}, "invalid read_timeout="),
        ({"buffer_size": None}, "invalid buffer_size="),
    ],
)
def test_bad_config_files(tmp_path: Path, content: object, message: str) -> None:
    """Malformed JSON, non-objects, unknown keys and wrong types are rejected clearly."""
    with pytest.raises(ConfigError) as err:
        load_config({}, config_path=write(tmp_path, content), environ={})
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"port": "20422"}, "invalid port=20422 from config file {path} (a JSON string: write "
                            "the number without quotes): must be an integer from 1 to 65535"),
        ({"metrics_enabled": "true"}, "(a JSON string: write true or false without quotes)"),
        ({"allow_socket": "/one"}, '(a JSON string: write a list, ["..."])'),
        ('{"port": 20022, "buffer_size": 8192,}', "config file {path} is not valid JSON: "
         "trailing comma at line 1 column 36; remove it (JSON allows no comma before } or ])"),
        ('{\n  "allow_socket": [\n    "/a",\n  ]\n}', "trailing comma at line 3 column 9"),
        ('{"port": 1 // ssh\n}', "a comment at line 1 column 12; JSON has no comments"),
        ("{'port': 1}", "a single quote at line 1 column 2; JSON strings and keys take double"),
        ({"allow_sockets": ["/x"]}, "unknown key 'allow_sockets' in config file {path}: did "
                                    "you mean allow_socket?"),
        ({"allowSocket": ["/x"]}, "did you mean allow_socket? (keys are snake_case)"),
        ({"frobnicate": 1}, "unknown key 'frobnicate' in config file {path}: no such setting; "
                            "every key is listed in docs/configuration.md"),
        ({"ssh_connection": ""}, "invalid ssh_connection= from config file {path} (empty): "
                                 "must be ssh://user@host:port/remote/socket/path; leave it out"),
    ],
)
def test_config_file_mistakes_name_the_fix(tmp_path: Path, content: object, message: str) -> None:
    """Quoted numbers, trailing commas, comments, typos in keys: each says what to write."""
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as err:
        load_config({}, config_path=path, environ={})
    assert message.replace("{path}", path) in str(err.value)
    assert "\n" not in str(err.value) and "allowed keys are" not in str(err.value)


@pytest.mark.parametrize("key", ["ssh_connection", "listen"])
def test_empty_flag_is_an_error_not_the_default(key: str) -> None:
    """--ssh-connection "" (or --listen "") is refused, not silently read as unset."""
    with pytest.raises(ConfigError, match=rf"^invalid {key}= from --{key.replace('_', '-')} "
                                          r"\(empty\): must be .*; leave it out") as err:
        load_config({key: ""}, environ={})
    assert err.value.exit_code == 2


def test_missing_config_file(tmp_path: Path) -> None:
    """A config file that cannot be read is named."""
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.json"):
        load_config({}, config_path=str(tmp_path / "nope.json"), environ={})


def test_bad_env_value_names_the_variable() -> None:
    """A bad environment value names the variable it came from."""
    with pytest.raises(ConfigError, match="from CDR_PORT"):
        load_config({}, environ={"CDR_PORT": "99999"})


# A valid value for each key that differs from its default, given as a flag's text.
FLAG_SAMPLES = {
    "host": "127.0.0.2", "identity_path": "/k/id", "known_hosts_path": "/k/kh",
    "authorized_keys_path": "/k/ak", "host_key_path": "/k/hk",
    "allow_socket": "/run/*.sock", "allowed_users": "alice", "log_level": "warn",
    "named_pipe": "npipe:////./pipe/other", "listen": "unix:///tmp/x.sock",
    "ssh_connection": "ssh://u@h:2222/run/podman.sock", "distribution": "Debian",
    "relay_program_path": "/usr/bin/relay", "tid_path": "/tmp/t.tid",
    "health_check_host": "127.0.0.3", "asyncssh_patches": "correctness",
    "forward": "unix:///tmp/f.sock=/run/engine.sock",
}


def _sample(name: str, opt: Option, default: object) -> tuple[str, object]:
    """Flag text for ``name`` and the value the loaded Config must then hold."""
    if name in FLAG_SAMPLES:
        text = FLAG_SAMPLES[name]
        return text, [text] if opt.kind == "list" else text
    if opt.kind == "bool":
        return ("false", False) if default else ("true", True)
    if opt.kind == "duration":
        return "7s", 7.0
    assert opt.kind == "int", name
    value = int(opt.maximum if opt.maximum is not None else 7)
    value = value if value != default else value - 1
    return str(value), value


@pytest.mark.parametrize("role", ["server", "client"])
def test_every_key_has_a_flag_and_help(role: str) -> None:
    """Every config key of the role has --key and -key flags whose help is the key's help, and
    the flag sets exactly that key."""
    shown = " ".join(find(role).parser().format_help().split())
    defaults = load_config({}, environ={})
    for f, opt in config_fields():
        dashed = f.name.replace("_", "-")
        if role not in opt.roles:
            assert f"--{dashed} " not in shown, f"{role} --help shows {f.name}"
            continue
        assert opt.help, f.name
        assert f"--{dashed} " in shown, f"no flag for {f.name}"
        # (whitespace ignored: argparse wraps long help, at hyphens too)
        assert "".join(opt.help.split()) in "".join(shown.split()), f"help of {f.name} not shown"
        text, expected = _sample(f.name, opt, getattr(defaults, f.name))
        for flag in (f"--{dashed}", f"-{dashed}"):
            loaded = parse_config(role, [flag, text], environ={})
            assert getattr(loaded, f.name) == expected, flag
        assert getattr(defaults, f.name) != expected, f"sample for {f.name} is its default"


@pytest.mark.parametrize(("key", "value", "why"), [
    ("read_timeout", "-1", "too small"), ("write_timeout", "-0.5", "too small"),
    ("port", "0", "too small"), ("port", "65536", "too large"),
    ("buffer_size", "1023", "too small"), ("keepalive_count_max", "1001", "too large"),
])
def test_range_edges_refused_with_the_reason(key: str, value: str, why: str) -> None:
    """One step past either end of a range is refused, naming the key, the source and why;
    0 = never does not open the door to negative limits."""
    with pytest.raises(ConfigError) as info:
        load_config({key: value}, environ={})
    dashed = key.replace("_", "-")
    assert str(info.value).startswith(f"invalid {key}={value} from --{dashed} ({why}): must be ")
    assert info.value.exit_code == 2


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("read_timeout", "0", 0.0), ("write_timeout", "0", 0.0), ("port", "1", 1),
    ("port", "65535", 65535), ("buffer_size", "1024", 1024), ("keepalive_count_max", "1000", 1000),
])
def test_range_edges_accepted(key: str, value: str, expected: float) -> None:
    """The ends of each range are inside it; 0 disables the idle limits."""
    assert getattr(load_config({key: value}, environ={}), key) == expected


@pytest.mark.parametrize("role", ["server", "client"])
def test_other_roles_keys_are_refused_as_flags_only(tmp_path: Path, role: str) -> None:
    """A flag of the other role is one line naming the role it belongs to; the same key in the
    shared config file and in the environment stays allowed."""
    defaults = load_config({}, environ={})
    foreign = [(f, opt) for f, opt in config_fields() if role not in opt.roles]
    assert foreign
    for f, opt in foreign:
        dashed = f.name.replace("_", "-")
        text, value = _sample(f.name, opt, getattr(defaults, f.name))
        for argv in ([f"--{dashed}", text], [f"-{dashed}={text}"]):
            with pytest.raises(ArgumentError) as err:
                parse_config(role, argv, environ={})
            other = opt.roles[0]
            assert str(err.value).startswith(
                f"--{dashed} is a {other} flag; the {role} does not use it"), err.value
            assert err.value.exit_code == 2
        path = write(tmp_path, {f.name: f"{value}s" if opt.kind == "duration" else value})
        from_file = parse_config(role, ["--config", path], environ={})
        assert getattr(from_file, f.name) == value, f.name
        from_env = parse_config(role, [], environ={f"CDR_{f.name.upper()}": text})
        assert getattr(from_env, f.name) == value, f.name



def test_empty_environment_variable_is_unset() -> None:
    """A variable set to the empty string counts as unset (the default stays), not as a value."""
    assert env_values({"CDR_PORT": ""}) == {}
    assert env_values({"CDR_PORT": "2222"}) == {"port": 2222}


def test_null_in_a_file_means_unset_only_where_unset_is_allowed(tmp_path: Path) -> None:
    """``null`` for a key whose default is unset (health_check_port) leaves it unset and the
    keys after it still count; for a key with a value (buffer_size) it is an error, above."""
    config = load_config({}, config_path=write(tmp_path, {"health_check_port": None,
                                                          "buffer_size": 65536}), environ={})
    assert config.health_check_port is None and config.buffer_size == 65536
