"""docs/troubleshooting.md is keyed by messages the relay really prints."""

from __future__ import annotations

import re

from helpers import REPO, SRC


def _source_text() -> str:
    """Every module's text, adjacent string literals joined as Python joins them."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in SRC.rglob("*.py"))
    joined = re.sub(r"\"\s*\n\s*f?\"", "", text)
    return joined.replace("\\\\", "\\")  # a message's "\\" is one backslash when printed


def _headings() -> list[str]:
    doc = (REPO / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    return [m for line in doc.splitlines() if line.startswith("### ")
            for m in re.findall(r"`([^`]+)`", line)]


def test_every_heading_is_a_real_message() -> None:
    """Each literal part of each heading (between <placeholders>) occurs in the source."""
    source = _source_text()
    headings = _headings()
    assert len(headings) > 30
    missing = []
    for heading in headings:
        for part in re.split(r"<[^>]+>", heading):
            part = part.strip(" ':")
            if len(part) >= 4 and part not in source:
                missing.append((heading, part))
    assert not missing, missing


def test_key_messages_are_covered() -> None:
    """The channel refusals and start-up errors users meet most have an entry."""
    text = " ".join(_headings())
    for needle in ("connection pool exhausted (max: ", "target socket <path> does not exist",
                   "refused the key", "changed: the server presented",
                   "another process is already listening on it",
                   "is accessible by group/others"):
        assert needle in text, needle
