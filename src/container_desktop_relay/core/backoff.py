"""Retry delays: exponential backoff with a cap and jitter, as a pure policy (no sleeping)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff", "worth_logging"]


@dataclass(slots=True)
class Backoff:
    """Delays of ``initial`` doubling up to ``cap`` seconds, each shortened by up to ``jitter``.

    Jitter only ever shortens a delay (by a random fraction up to ``jitter`` of it), so a delay
    never exceeds ``cap`` and never falls below ``(1 - jitter)`` of its nominal value. Many
    clients that lost the same server therefore do not retry in lock-step.
    """

    initial: float = 0.1
    cap: float = 2.0
    factor: float = 2.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempt: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.cap) or self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError("backoff needs 0 < initial <= cap, factor >= 1, 0 <= jitter < 1")

    def nominal(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (0-based), without jitter."""
        return min(self.cap, self.initial * self.factor ** min(attempt, 64))

    def next(self) -> float:
        """The delay to wait before the next retry; advances the attempt count."""
        base = self.nominal(self.attempt)
        self.attempt += 1
        return base * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        """Start over from ``initial`` (after a success)."""
        self.attempt = 0


def worth_logging(attempt: int) -> bool:
    """Whether failure number ``attempt`` (1-based) of a retry loop is logged loudly: the first
    three, then one in 30 (about a minute apart at the 2 s cap); the rest go to debug."""
    return attempt <= 3 or attempt % 30 == 0
