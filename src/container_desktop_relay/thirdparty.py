"""Known third-party warnings: each one tolerated here, where it arises, and why."""

from __future__ import annotations

import importlib
import warnings
from typing import NamedTuple

__all__ = ["TOLERATED", "Tolerated", "install_filters", "pytest_filters"]


class Tolerated(NamedTuple):
    """One warning category, raised from one third-party package, that is not ours to fix."""

    category: str  # dotted path of the warning class
    module: str  # regular expression for the module the warning is attributed to
    reason: str


TOLERATED: tuple[Tolerated, ...] = (
    Tolerated(
        "cryptography.utils.CryptographyDeprecationWarning",
        r"asyncssh(\.|$)",
        "cryptography 47+ deprecates DSA and asyncssh names its DSA types at import; the relay "
        "never creates, loads or offers DSA keys (RSA and the keys OpenSSH writes)",
    ),
)


def _category(path: str) -> type[Warning] | None:
    module, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):  # an older release without that class: nothing raises it
        return None
    return found if isinstance(found, type) and issubclass(found, Warning) else None


def install_filters() -> None:
    """Silence exactly the tolerated warnings, by category and raising module (none else)."""
    for item in TOLERATED:
        category = _category(item.category)
        if category is not None:
            warnings.filterwarnings("ignore", category=category, module=item.module)


def pytest_filters() -> list[str]:
    """The same list as pytest ``filterwarnings`` lines (added after "error", so they win)."""
    return [f"ignore::{item.category}:{item.module}" for item in TOLERATED]
