"""Every shell example in README.md and docs/ runs as written (issue 20), or says why not.

Every fenced block tagged sh, bash, shell or console in README.md and docs/*.md is listed in
EXAMPLES, keyed by (file, its first command line), with one class:

* Run(group): run with ``bash -euo pipefail`` in a sandbox: a fresh temp HOME, a temp cwd,
  the venv's ``container-desktop-relay`` first on PATH, XDG_RUNTIME_DIR unset (as in a root
  shell). Blocks of one file with the same group run in order in one sandbox. ``given`` is
  what the prose around a block says has happened (e.g. "a server is running"), run first.
* Install: the install block; runs its ``python -m pip install dist/*.whl`` alternative into a
  temp venv (offline, from the wheel ``make dist`` built) and ``container-desktop-relay
  --version`` from there.
* Sample: sample output (``console``): each ``$ command`` parses (``--help``), and the fields
  shown exist in the command's real output against a running relay.
* Exempt(reason): does not run here, and the reason why.

Three rules make the blocks runnable side by side with other tests, applied by the runner:

* BACKGROUND: a line that starts a role (``container-desktop-relay server|client``) or
  ``ssh -N`` is started in the background (its trailing ``&``, if any, dropped) and the runner
  waits until it answers: the server's ``server_listening`` event, the client's
  ``client_ready`` (linked, remote socket probed), the ``ssh -L`` socket. A role line with more
  lines after it in its block must end with ``&`` (else a reader's next line never runs).
  Everything started is stopped at the end, also when the test fails.
* REWRITE (the one rewrite rule, one regular expression, one pass): the doc's fixed port
  20022 becomes this test's free port (also where a server uses it by default: CDR_PORT);
  ``/var/run/docker.sock`` and ``/run/podman/podman.sock`` become the test's Podman API socket
  (the test cannot own those system paths); ``/tmp`` becomes the sandbox's own tmp directory
  (so parallel runs never share /tmp/docker.sock). Nothing else is changed.
* OPENSSH_HOME: OpenSSH reads ``~/.ssh`` from the password database, not ``$HOME``, so an
  ``ssh`` wrapper first on PATH adds ``-F`` with the sandbox HOME's identity and known_hosts.

docs/original-spec.md is exempt as a whole: it is the original Go tool's README (the spec),
not this project's documentation.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import (
    FACTOR,
    REPO,
    Podman,
    Proc,
    free_port,
    need_tool,
    short_tmpdir,
    skip_or_fail,
    stopping,
    tcp_open,
    unix_open,
    wait_for,
)

pytestmark = pytest.mark.e2e

SPEC = "docs/original-spec.md"  # the original Go tool's README: the spec, not our docs
DOC_FILES = ["README.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")
                                  if f"docs/{p.name}" != SPEC)]
SHELL_TAGS = ("sh", "bash", "shell", "console")
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<tag>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```",
                   re.M | re.S)
DOC_PORT = "20022"
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Block:
    """One shell block of a doc file."""

    file: str
    line: int
    tag: str
    text: str

    @property
    def key(self) -> str:
        """The block's first command line (a console block's first ``$`` line)."""
        for raw in self.text.splitlines():
            line = raw.strip()
            if self.tag == "console":
                if line.startswith("$ "):
                    return line[2:].strip()
            elif line and not line.startswith("#"):
                return line
        return ""


@dataclass(frozen=True)
class Run:
    """Runs in sandbox ``group`` of its file, after ``given``."""

    group: str
    given: str = ""


@dataclass(frozen=True)
class Install:
    """The install block: its pip alternative runs from dist/*.whl into a temp venv."""


@dataclass(frozen=True)
class Sample:
    """Sample output: its commands parse, its fields exist in the real output."""


@dataclass(frozen=True)
class Exempt:
    """Does not run on this Linux test machine; ``reason`` says why."""

    reason: str


WINDOWS = ("needs Windows (container-desktop-relay.exe, npipe, wsl.exe); tests/windows runs the "
           "client's Windows code under Wine")
SYSTEMD = ("needs systemd as PID 1 (systemctl) and sudo into /etc; tests/e2e/test_systemd.py "
           "checks the unit files with systemd-analyze verify")
USER_SYSTEMD = ("needs a systemd user manager (systemctl --user, loginctl); "
                "tests/e2e/test_systemd.py checks the user unit with systemd-analyze verify")
THIS_RUN = "is this test run itself or a build it depends on (make test/e2e/dist/...)"
SERVER_RUNNING = ("container-desktop-relay keygen\n"
                  "container-desktop-relay server --port 20022 &\n")

# (file, first command line) -> class. A new block, or one whose first line changed, fails
# test_every_block_is_classified until it is entered here.
EXAMPLES: dict[tuple[str, str], Run | Install | Sample | Exempt] = {
    ("README.md", "make demo   # Podman's Docker API, then docker CLI -> relay client socket "
                  "-> server -> Podman"):
        Exempt("installs system packages with apt (network), then runs the chain the Run "
               "blocks run; " + THIS_RUN),
    ("README.md", "python -m build                                   # dist/*.whl and "
                  "dist/*.tar.gz (or: make package)"): Install(),
    ("README.md", "container-desktop-relay keygen"): Run("usage"),
    ("README.md", "container-desktop-relay.exe --named-pipe npipe:////./pipe/container-desktop"
                  " \\"): Exempt(WINDOWS),
    ("README.md", "make test                # everything (what CI runs), then the interop suite"
                  " at the floors"): Exempt(THIS_RUN),
    ("docs/client.md", "container-desktop-relay client \\"):
        Run("posix", given=SERVER_RUNNING),
    ("docs/client.md", "container-desktop-relay.exe --named-pipe npipe:////./pipe/"
                       "container-desktop \\"): Exempt(WINDOWS),
    ("docs/client.md", "container-desktop-relay server --port 20022 \\"):
        Run("engines", given="container-desktop-relay keygen\n"),
    ("docs/observability.md", "container-desktop-relay status"): Sample(),
    ("docs/observability.md", 'container-desktop-relay status --role client >/dev/null || '
                              'echo "relay not ready"'): Run("probe"),
    ("docs/quickstart.md", "python -m build                                   # in a checkout:"
                           " dist/*.whl and dist/*.tar.gz"): Install(),
    ("docs/quickstart.md", "container-desktop-relay keygen               # ~/.ssh/id_rsa (0600),"
                           " authorized in ~/.ssh/authorized_keys"): Run("server"),
    ("docs/quickstart.md", "ssh -N -p 20022 -o StrictHostKeyChecking=accept-new \\"):
        Run("server"),
    ("docs/quickstart.md", "sudo container-desktop-relay install-service           # "
                           "/etc/systemd/system/container-desktop-relay.service"):
        Exempt(SYSTEMD),
    ("docs/quickstart.md", "container-desktop-relay keygen"): Exempt(USER_SYSTEMD),
    ("docs/quickstart.md", "container-desktop-relay client \\"): Run("server"),
    ("docs/quickstart.md", "container-desktop-relay keygen                                   "
                           "# once: ~/.ssh/id_rsa and id_rsa.pub"): Run("server"),
    ("docs/quickstart.md", "cat client-key.line >> ~/.ssh/authorized_keys"): Run("server"),
    # "If you copied the PEM id_rsa.pub itself": the copy is the given.
    ("docs/quickstart.md", "ssh-keygen -i -m PEM -f id_rsa.pub >> ~/.ssh/authorized_keys"):
        Run("server", given="cp ~/.ssh/id_rsa.pub .\n"),
    ("docs/quickstart.md", "mkdir -p ~/.local/share/bash-completion/completions ~/.zfunc "
                           "~/.config/fish/completions"): Run("server"),
    ("docs/windows.md", "make wine-setup      # once: apt wine + binutils-mingw (~30 s), then "
                        ".cache/wine (~35 s, 1.5 GB)"):
        Exempt("installs Wine with apt (network); " + THIS_RUN),
    ("docs/windows.md", "make dist            # everything below, each rebuilt only when its "
                        "inputs changed"):
        Exempt(THIS_RUN + "; tests/dist checks what it builds"),
}


def doc_blocks() -> list[Block]:
    """Every shell block of README.md and docs/*.md (the spec excepted), in file order."""
    found = []
    for name in DOC_FILES:
        text = (REPO / name).read_text()
        for m in FENCE.finditer(text):
            if m.group("tag") in SHELL_TAGS:
                body = "\n".join(line.removeprefix(m.group("indent"))
                                 for line in m.group("body").splitlines())
                found.append(Block(name, text.count("\n", 0, m.start()) + 1, m.group("tag"),
                                   body))
    return found


BLOCKS = doc_blocks()


def classified(cls: type) -> list[Block]:
    return [b for b in BLOCKS if isinstance(EXAMPLES.get((b.file, b.key)), cls)]


def run_groups() -> dict[str, list[Block]]:
    groups: dict[str, list[Block]] = {}
    for block in classified(Run):
        entry = EXAMPLES[(block.file, block.key)]
        assert isinstance(entry, Run)
        groups.setdefault(f"{block.file}:{entry.group}", []).append(block)
    return groups


# ---------------------------------------------------------------- the table is complete
def test_every_block_is_classified() -> None:
    """Each shell block has exactly one entry, and each entry still names a block."""
    problems = []
    seen: dict[tuple[str, str], Block] = {}
    for block in BLOCKS:
        where = (block.file, block.key)
        if where in seen:
            problems.append(f"{block.file}:{block.line}: two shell blocks start with "
                            f"{block.key!r} (also line {seen[where].line}): make the first "
                            "command lines differ, they are the blocks' keys")
        seen[where] = block
        if where not in EXAMPLES:
            problems.append(
                f"{block.file}:{block.line}: the {block.tag} block starting {block.key!r} is "
                f"not classified: add ({block.file!r}, {block.key!r}) to EXAMPLES in "
                "tests/e2e/test_docs_examples.py as Run(group) if it runs on Linux (it then "
                "runs in a sandbox), Sample() for sample output, or Exempt(reason) saying "
                "why it cannot run here")
    for where in EXAMPLES:
        if where not in seen:
            problems.append(f"EXAMPLES entry {where!r} names no shell block any more: "
                            "remove it, or give the changed block's new first line")
    assert not problems, "\n".join(problems)


def test_exemptions_are_few_and_say_why() -> None:
    exempt = [e for e in EXAMPLES.values() if isinstance(e, Exempt)]
    assert all(e.reason.strip() for e in exempt)
    assert len(exempt) <= len(EXAMPLES) // 2, "more blocks exempt than run: fix the docs"


# ---------------------------------------------------------------- the rules
BACKGROUND = re.compile(r"^(?:container-desktop-relay|python -m container_desktop_relay)\s+"
                        r"(?P<role>server|client)\b|^ssh\s+-N\b")
TRAILING_AMP = re.compile(r"\s*&\s*(?:#.*)?$")


@dataclass
class Sandbox:
    """A fresh HOME and cwd, the rewrite rule's targets, and what it started."""

    root: Path
    engine: Path
    port: int = field(default_factory=lambda: doc_port())
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        for sub in ("home", "work", "tmp", "bin"):
            (self.root / sub).mkdir(parents=True)
        # OPENSSH_HOME: ssh finds ~/.ssh through the password database, not $HOME; a wrapper
        # first on PATH points it at the sandbox's HOME (and keeps the real ~/.ssh untouched).
        home = self.root / "home"
        config = self.root / "ssh_config"
        config.write_text(f"IdentityFile {home}/.ssh/id_rsa\n"
                          f"UserKnownHostsFile {home}/.ssh/known_hosts\n")
        ssh = need_tool("ssh")
        wrapper = self.root / "bin" / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec {ssh} -F {config} "$@"\n')
        wrapper.chmod(0o755)
        self.rewrite_rule = re.compile(
            rf"\b{DOC_PORT}\b|/var/run/docker\.sock|/run/podman/podman\.sock|"
            r"(?:(?<=unix://)|(?<![\w./]))/tmp(?=[/}]|$)")

    def rewrite(self, text: str) -> str:
        """The one rewrite rule (module docstring), in one pass."""
        def replace(m: re.Match[str]) -> str:
            word = m.group(0)
            if word == DOC_PORT:
                return str(self.port)
            if word == "/tmp":
                return str(self.root / "tmp")
            return str(self.engine)
        return self.rewrite_rule.sub(replace, text)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CDR_", "DOCKER_", "XDG_", "SSH_"))
               and k not in ("PYTHONPATH", "LOG_LEVEL", "VIRTUAL_ENV")}
        path = os.pathsep.join([str(VENV_BIN), str(self.root / "bin"), env["PATH"]])
        env.update(HOME=str(self.root / "home"), PATH=path,
                   CDR_PORT=str(self.port))  # REWRITE: the default port 20022, implied
        return env

    def run_block(self, block: Block, given: str = "") -> None:
        """``given``, then the block: foreground lines in bash, BACKGROUND lines started."""
        chunk: list[str] = []
        lines = logical_lines(given) + logical_lines(block.text)
        for i, line in enumerate(lines):
            line = self.rewrite(line)
            amp = bool(TRAILING_AMP.search(line))
            if BACKGROUND.match(line) and "--help" not in line:
                more = any(not rest.lstrip().startswith("#") for rest in lines[i + 1:])
                assert amp or not more, (
                    f"{block.file}:{block.line}: {line!r} runs until stopped, so the next line "
                    "of the block would never run: end it with ' &' (or end the block there)")
                self.shell("\n".join(chunk), block)
                chunk = []
                self.background(TRAILING_AMP.sub("", line), block)
            else:
                assert not amp, (f"{block.file}:{block.line}: {line!r} ends with '&' but is "
                                 "no role or ssh -N line, which the runner starts and stops")
                chunk.append(line)
        self.shell("\n".join(chunk), block)

    def shell(self, script: str, block: Block) -> None:
        if not script.strip():
            return
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script],
                                cwd=self.root / "work", env=self.env, text=True,
                                capture_output=True, stdin=subprocess.DEVNULL,
                                timeout=120 * FACTOR)
        assert result.returncode == 0, (
            f"{block.file}:{block.line}: exit status {result.returncode} from\n{script}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n{self.logs()}")

    def background(self, line: str, block: Block) -> None:
        """BACKGROUND: start ``line``, wait until it answers."""
        proc = Proc(["bash", "-euo", "pipefail", "-c", line],
                    self.root / f"bg{len(self.procs)}.log", env=self.env, cwd=self.root / "work")
        self.procs.append(proc)
        role = BACKGROUND.match(line)
        assert role is not None
        if role.group("role"):  # the role's own event: listening, or linked and probed
            event = '"server_listening"' if role.group("role") == "server" else '"client_ready"'
            ready = lambda: event in proc.log()  # noqa: E731
        else:
            m = re.search(r"-L\s+(\S+?):", line)
            assert m, f"{block.file}:{block.line}: ssh -N without -L LOCAL:REMOTE: {line}"
            ready = lambda: unix_open(m.group(1))  # noqa: E731
        wait_for(lambda: ready() or not proc.alive(), 60, f"{line!r} to answer")
        assert proc.alive(), (f"{block.file}:{block.line}: {line!r} exited "
                              f"{proc.popen.returncode}:\n{proc.log()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.argv[-1]}\n{p.log()}" for p in self.procs)

    def stop(self) -> None:
        with stopping(*self.procs):
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def doc_port() -> int:
    """A free port whose derived /health and /metrics ports (+58, +59, +68, +69: a server
    or client started as the docs write it serves them) are free too."""
    while True:
        port = free_port()
        if port + 69 < 65536 and not any(tcp_open("127.0.0.1", port + d)
                                         for d in (58, 59, 68, 69)):
            return port


def logical_lines(text: str) -> list[str]:
    """The block's lines with backslash continuations joined."""
    return [line for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def test_rewrite_rule(tmp: Path) -> None:
    """REWRITE changes the fixed port, the engine socket paths and /tmp, and nothing else."""
    box = Sandbox(tmp / "box", tmp / "engine.sock")
    t = box.root / "tmp"
    doc = ('ssh -p 20022 -L /tmp/d.sock:/var/run/docker.sock "unix://${XDG_RUNTIME_DIR:-/tmp}/r"'
           " unix:///tmp/x=/run/podman/podman.sock /var/tmp/a /x/tmp/b 200220 /tmp")
    assert box.rewrite(doc) == (
        f'ssh -p {box.port} -L {t}/d.sock:{tmp}/engine.sock "unix://${{XDG_RUNTIME_DIR:-{t}}}/r"'
        f" unix://{t}/x={tmp}/engine.sock /var/tmp/a /x/tmp/b 200220 {t}")


@pytest.fixture
def sandbox(podman: Podman) -> Iterator[Sandbox]:
    if not (VENV_BIN / "container-desktop-relay").exists():
        skip_or_fail(f"no container-desktop-relay in {VENV_BIN}", "make venv")
    box = Sandbox(short_tmpdir(), podman.socket)
    try:
        yield box
    finally:
        box.stop()


@pytest.mark.parametrize("group", sorted(run_groups()))
def test_run_blocks(group: str, sandbox: Sandbox) -> None:
    """The group's blocks, in file order, in one sandbox, succeed."""
    for block in run_groups()[group]:
        entry = EXAMPLES[(block.file, block.key)]
        assert isinstance(entry, Run)
        sandbox.run_block(block, entry.given)
        for proc in sandbox.procs:
            assert proc.alive(), f"{block.file}:{block.line}: {proc.argv[-1]!r} died:\n" \
                                 f"{proc.log()}"


# ---------------------------------------------------------------- install and samples
def test_install_from_wheel(tmp: Path) -> None:
    """The install blocks' ``python -m pip install dist/*.whl`` into a temp venv, then
    ``container-desktop-relay --version`` from there (once: the blocks say the same)."""
    blocks = classified(Install)
    assert blocks
    for block in blocks:
        for line in ("python -m pip install dist/*.whl", "container-desktop-relay --version"):
            assert line in block.text, f"{block.file}:{block.line}: no {line!r}:\n{block.text}"
    wheels = sorted((REPO / "dist").glob("container_desktop_relay-*.whl"))
    if not wheels:
        skip_or_fail("no dist/container_desktop_relay-*.whl", "make dist")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120 * FACTOR)
    # Offline: the wheel itself, its dependencies from this venv's site-packages.
    site = next((venv / "lib").glob("python*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (site / "dev-deps.pth").write_text("\n".join(deps) + "\n")
    result = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q",
                             "--no-index", "--no-deps", str(wheels[-1])],
                            capture_output=True, text=True, timeout=120 * FACTOR)
    assert result.returncode == 0, result.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(venv / "bin/container-desktop-relay"), "--version"], env=env,
                            capture_output=True, text=True, timeout=60 * FACTOR)
    assert result.returncode == 0, result.stderr
    assert re.search(r"\d+\.\d+", result.stdout), result.stdout
    where = subprocess.run([str(venv / "bin/python"), "-c",
                            "import container_desktop_relay as m; print(m.__file__)"], env=env,
                           capture_output=True, text=True, timeout=60 * FACTOR)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr


@pytest.mark.parametrize("block", classified(Sample), ids=lambda b: f"{b.file}:{b.line}")
def test_sample_output(block: Block, sandbox: Sandbox) -> None:
    """Each ``$ command`` parses; run against a real server, its output has the shown fields."""
    commands = [line[2:] for line in block.text.splitlines() if line.startswith("$ ")]
    labels = [m.group(1) for line in block.text.splitlines()
              if (m := re.match(r"^(\w[\w ]*?\w|\w)\s{2,}\S", line))]
    assert commands and labels, block.text
    sandbox.run_block(Block(block.file, block.line, "bash", SERVER_RUNNING))
    for command in commands:
        sandbox.shell(command + " --help >/dev/null", block)
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", command],
                             cwd=sandbox.root / "work", env=sandbox.env, text=True,
                             capture_output=True, timeout=60 * FACTOR)
        shown = [line.split("  ")[0] for line in out.stdout.splitlines()]
        missing = [label for label in labels if label not in shown]
        assert not missing, (f"{block.file}:{block.line}: {command!r} shows no "
                             f"{missing} (real output:\n{out.stdout}{out.stderr})")
