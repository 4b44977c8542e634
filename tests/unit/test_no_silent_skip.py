"""CI never skips: every skip path in the suite goes through helpers.skip_or_fail."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import REPO, skip_or_fail, under_ci

TESTS = REPO / "tests"
# Any way pytest (or unittest) can skip or expect a failure, spelled in a test file.
SKIP = re.compile(r"pytest\.skip\b|\bskipif\b|importorskip|mark\.skip\b|\bxfail\b|skipTest"
                  r"|unittest\.skip")


def test_only_the_helper_skips() -> None:
    """No file but tests/helpers.py skips, so no skip can ignore a truthy CI."""
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        if path == TESTS / "helpers.py" or path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if SKIP.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert found == [], "skip outside helpers.skip_or_fail:\n" + "\n".join(found)


def test_helper_has_the_one_skip() -> None:
    """helpers.py calls pytest.skip once, inside skip_or_fail, after asking under_ci."""
    text = (TESTS / "helpers.py").read_text(encoding="utf-8")
    assert len(re.findall(r"pytest\.skip\(", text)) == 1
    body = text[text.index("def skip_or_fail"):]
    body = body[:body.index("\ndef ", 1)]
    assert body.index("under_ci()") < body.index("pytest.skip(")


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "True", "yes", "YES", "on", " true "])
def test_truthy_ci_values(value: str) -> None:
    """CI=1, true, yes, on, in any case, all mean CI."""
    assert under_ci({"CI": value})


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off"])
def test_falsy_ci_values(value: str) -> None:
    """An empty, 0, false, no or off CI is a developer's run."""
    assert not under_ci({"CI": value})
    assert not under_ci({})


def test_skip_or_fail_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under CI=1 a missing dependency is a failure, not a skip."""
    monkeypatch.setenv("CI", "1")
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception)) as info:
        skip_or_fail("Wine is not installed")
    assert info.type is pytest.fail.Exception
    assert "Wine is not installed; CI requires it" in str(info.value)


def test_skip_or_fail_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without CI the same call is a skip with the message."""
    monkeypatch.setenv("CI", "false")
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception)) as info:
        skip_or_fail("Wine is not installed")
    assert info.type is pytest.skip.Exception
    assert "Wine is not installed" in str(info.value)
