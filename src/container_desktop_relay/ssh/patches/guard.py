"""Patch guards: a source-free fingerprint of each replaced function, and reversible install.

A patch replaces private asyncssh functions. It is installed only when every function it
replaces (or relies on) still has the fingerprint of the release it was written against, so
an asyncssh upgrade that changes one of them skips that patch instead of corrupting the
relay. Fingerprints are computed from code objects alone (the PyInstaller builds carry no
source) and are the same on CPython 3.11 and 3.12: they digest the argument layout and the
*sets* of names, local variables and constants of the function and everything nested in it,
which comprehension inlining (3.12, PEP 709) and bytecode changes leave alone. A change that
only swaps an operator keeps the fingerprint; the interop suite (also run against the newest
asyncssh) is the net for those.
"""

from __future__ import annotations

import hashlib
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Patch", "Target", "describe", "fingerprint", "lookup"]

_MISSING = object()
_ARG_FLAGS = 0x04 | 0x08  # CO_VARARGS | CO_VARKEYWORDS


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _canon(value: Any) -> str:
    """A text form of a constant that does not depend on hash order or the Python version."""
    if isinstance(value, (frozenset, set)):
        return "{" + ",".join(sorted(_canon(v) for v in value)) + "}"
    if isinstance(value, tuple):
        return "(" + ",".join(_canon(v) for v in value) + ")"
    return f"{type(value).__name__}:{value!r}"


def fingerprint(func: Any) -> str:
    """A 16-hex-digit digest of ``func``'s code that is stable across CPython 3.11 and 3.12.

    Works without source (``inspect.getsource`` fails in frozen builds): it uses only the
    code object: the argument layout, and the sorted sets of global/attribute names, local
    variable names, free/cell variable names and constants (docstrings and None left out)
    over the function and its nested code objects.
    """
    func = getattr(func, "__func__", func)
    code: types.CodeType = func.__code__
    nargs = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & 0x04) \
        + bool(code.co_flags & 0x08)
    layout = (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount,
              code.co_flags & _ARG_FLAGS, code.co_varnames[:nargs])
    names: set[str] = set()
    local: set[str] = set()
    consts: set[str] = set()
    for c in _codes(code):
        names.update(c.co_names)
        local.update(n for n in (*c.co_varnames, *c.co_cellvars, *c.co_freevars)
                     if not n.startswith("."))
        doc = c.co_consts[0] if c.co_consts and isinstance(c.co_consts[0], str) else None
        for i, const in enumerate(c.co_consts):
            if isinstance(const, types.CodeType) or const is None or (i == 0 and const == doc
                                                                        and c is code):
                continue
            consts.add(_canon(const))
    text = repr((layout, sorted(names), sorted(local), sorted(consts)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Target:
    """One replaced (or relied-on) function: ``owner.name``, or ``owner[name]`` for a dict."""

    owner: Any
    name: Any
    label: str
    #: fingerprint of the function it had in the release the patch was written against
    expected: str
    #: the replacement; None for a function the patch only relies on (checked, not replaced)
    new: Any = None
    #: a plain attribute the patch adds (no fingerprint: nothing of asyncssh's is replaced)
    added: bool = False


def lookup(owner: Any, name: Any) -> Any:
    """The current value of ``owner.name`` (or ``owner[name]``), following inheritance."""
    if isinstance(owner, dict):
        return owner.get(name, _MISSING)
    return getattr(owner, name, _MISSING)


def _own(owner: Any, name: Any) -> Any:
    if isinstance(owner, dict):
        return owner.get(name, _MISSING)
    return owner.__dict__.get(name, _MISSING)


def _put(owner: Any, name: Any, value: Any) -> None:
    if isinstance(owner, dict):
        if value is _MISSING:
            owner.pop(name, None)
        else:
            owner[name] = value
    elif value is _MISSING:
        delattr(owner, name)
    else:
        setattr(owner, name, value)


@dataclass(slots=True)
class Patch:
    """A fix applied or skipped as a whole: its targets, its kind, and how to undo it."""

    name: str
    kind: str  # "correctness" | "speed"
    summary: str
    targets: list[Target]
    #: run after install (e.g. to record an original the replacement calls)
    on_install: Callable[[], None] | None = None
    saved: list[tuple[Any, Any, Any]] = field(default_factory=list)
    #: whether the patch is in place
    active: bool = False

    def mismatch(self) -> str:
        """Why the patch cannot apply to the asyncssh loaded ("" when every target matches)."""
        for t in self.targets:
            if t.added:
                continue
            current = lookup(t.owner, t.name)
            if current is _MISSING:
                return f"{t.label} is gone"
            got = fingerprint(current)
            if got != t.expected:
                return f"{t.label} changed (fingerprint {got}, patch written for {t.expected})"
        return ""

    def install(self) -> None:
        """Replace every target (the caller checked :meth:`mismatch` first)."""
        for t in self.targets:
            if t.new is None and not t.added:
                continue
            self.saved.append((t.owner, t.name, _own(t.owner, t.name)))
            _put(t.owner, t.name, t.new)
        self.active = True
        if self.on_install is not None:
            self.on_install()

    def uninstall(self) -> None:
        """Put back what :meth:`install` replaced."""
        for owner, name, old in reversed(self.saved):
            _put(owner, name, old)
        self.saved.clear()
        self.active = False


def describe(patch: Patch) -> dict[str, Any]:
    """JSON-able facts about a patch, for logs, /health and doctor."""
    return {"name": patch.name, "kind": patch.kind, "summary": patch.summary,
            "targets": [t.label for t in patch.targets if not t.added]}
