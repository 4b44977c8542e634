"""Backoff policy: doubling from 100 ms, 2 s cap, jitter bounds, reset."""

from __future__ import annotations

import random

import pytest

from container_desktop_relay.core.backoff import Backoff


class _Fixed(random.Random):
    """A random source that always returns one value."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_nominal_sequence_doubles_to_cap() -> None:
    """Without jitter the delays are 0.1, 0.2, 0.4, 0.8, 1.6, then 2.0 forever."""
    b = Backoff(jitter=0.0)
    assert [round(b.next(), 6) for _ in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]


def test_jitter_only_shortens_within_bound() -> None:
    """Every jittered delay lies in [(1 - jitter) * nominal, nominal]."""
    b = Backoff(jitter=0.2, rng=random.Random(7))
    for attempt in range(50):
        nominal = b.nominal(attempt)
        delay = b.next()
        assert nominal * 0.8 - 1e-12 <= delay <= nominal
        assert delay <= 2.0


def test_jitter_extremes() -> None:
    """The random draw maps linearly onto the jitter range."""
    assert Backoff(rng=_Fixed(0.0)).next() == pytest.approx(0.1)
    assert Backoff(rng=_Fixed(0.999999)).next() == pytest.approx(0.08, rel=1e-4)


def test_jitter_varies_between_clients() -> None:
    """Two clients with different random sources do not retry in lock-step."""
    a = Backoff(rng=random.Random(1))
    b = Backoff(rng=random.Random(2))
    assert [a.next() for _ in range(5)] != [b.next() for _ in range(5)]


def test_reset_starts_over() -> None:
    """After a success the next delay is the initial one again."""
    b = Backoff(jitter=0.0)
    for _ in range(6):
        b.next()
    b.reset()
    assert b.next() == pytest.approx(0.1)


def test_huge_attempt_does_not_overflow() -> None:
    """A very long outage keeps returning the cap."""
    b = Backoff(jitter=0.0, attempt=10_000)
    assert b.next() == 2.0


@pytest.mark.parametrize("kw", [{"initial": 0}, {"initial": 3.0}, {"factor": 0.5},
                                {"jitter": 1.0}, {"jitter": -0.1}])
def test_invalid_parameters_rejected(kw: dict[str, float]) -> None:
    """Nonsense parameters are refused at construction."""
    with pytest.raises(ValueError, match=r"^backoff needs 0 < initial <= cap, factor >= 1, "
                                         r"0 <= jitter < 1$"):
        Backoff(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("kw", [{"initial": 2.0, "cap": 2.0}, {"factor": 1.0}, {"jitter": 0.0},
                                {"factor": 1.5}])
def test_boundary_parameters_accepted(kw: dict[str, float]) -> None:
    """The edges of the allowed ranges are allowed: initial == cap, factor 1 (constant delay)
    and factors between 1 and 2, no jitter."""
    b = Backoff(**kw)  # type: ignore[arg-type]
    assert b.nominal(0) == b.initial


def test_exponent_is_clamped_at_64() -> None:
    """The exponent stops growing at 64 (no overflow), visible with a factor barely above 1."""
    b = Backoff(initial=1.0, cap=1e9, factor=1.01, jitter=0.0)
    assert b.nominal(10_000) == b.nominal(64) == 1.01 ** 64 != 1.01 ** 65
