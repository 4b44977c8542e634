"""asyncssh patches, each guarded by fingerprints: which to apply, applying them, reporting them.

``correctness`` patches (flowcontrol.py) keep memory bounded and closes complete; ``speed``
patches (fastpath.py, lifecycle.py) make the same work cheaper. :func:`apply` installs those
the mode selects whose targets still match (guard.py) and warns once about the rest; a relay
with none applied still relays correctly, only slower.
"""

from __future__ import annotations

import sys
from typing import Any

import asyncssh

from container_desktop_relay.log import get_logger
from container_desktop_relay.ssh.patches import fastpath, flowcontrol, lifecycle
from container_desktop_relay.ssh.patches.guard import Patch, describe

__all__ = ["MODES", "PATCHES", "WRITTEN_FOR", "active", "apply", "catalog", "report"]

log = get_logger(__name__)

#: ``asyncssh_patches`` values: every patch, the correctness fixes only, or none.
MODES = ("all", "correctness", "none")
#: asyncssh release the fingerprints were taken from.
WRITTEN_FOR = "2.24.1"
PATCHES: list[Patch] = [*flowcontrol.PATCHES, *fastpath.PATCHES, *lifecycle.PATCHES]

_state: dict[str, Any] = {"mode": None, "not_applied": {}, "active": frozenset()}


def _wanted(patch: Patch, mode: str) -> bool:
    return mode == "all" or (mode == "correctness" and patch.kind == "correctness")


def apply(mode: str = "all") -> dict[str, Any]:
    """Install the patches ``mode`` selects whose targets match; returns :func:`report`.

    Idempotent per mode: the first call for a mode logs one ``asyncssh_patches_not_applied``
    warning naming asyncssh's version and every patch left out with the reason; calling again
    with the same mode does nothing. Another mode (tests, diagnosis) first puts asyncssh's
    own functions back.

    Raises:
        ValueError: ``mode`` is not one of :data:`MODES`.
    """
    if mode not in MODES:
        raise ValueError(f"asyncssh_patches must be one of {', '.join(MODES)}, not {mode!r}")
    if _state["mode"] == mode:
        return report()
    for patch in reversed(PATCHES):
        patch.uninstall()
    _state["active"] = frozenset()
    reasons = {p.name: p.mismatch() for p in PATCHES}  # all checked against asyncssh's own
    not_applied: dict[str, str] = {}
    for patch in PATCHES:
        if not _wanted(patch, mode):
            not_applied[patch.name] = f"not selected (asyncssh_patches={mode})"
        elif reasons[patch.name]:
            not_applied[patch.name] = reasons[patch.name]
        else:
            patch.install()
    _state["mode"] = mode
    _state["not_applied"] = not_applied
    _state["active"] = frozenset(p.name for p in PATCHES if p.active)
    if not_applied:
        log.warning("asyncssh_patches_not_applied", extra={
            "asyncssh": asyncssh.__version__, "written_for": WRITTEN_FOR, "mode": mode,
            "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
            "not_applied": not_applied})
    return report()


def active(name: str) -> bool:
    """Whether the patch called ``name`` is in place."""
    return name in _state["active"]


def report() -> dict[str, Any]:
    """asyncssh's version, the mode, and which patches are active or not (with why)."""
    return {
        "asyncssh": asyncssh.__version__,
        "mode": _state["mode"],
        "active": [p.name for p in PATCHES if p.active],
        "not_applied": dict(_state["not_applied"]),
    }


def catalog() -> list[dict[str, Any]]:
    """Every patch: name, kind, what it does, the asyncssh functions it guards on."""
    return [describe(p) for p in PATCHES]
