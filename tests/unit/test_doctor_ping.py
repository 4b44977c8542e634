"""doctor's /_ping probe reads one HTTP answer, whatever the chunking or keep-alive."""

from __future__ import annotations

import asyncio

import pytest

from container_desktop_relay.commands.doctor import PING, Check, ping_stream, render, summary


class _Reader:
    """Hands out the given chunks, then EOF (or blocks forever when ``hang``)."""

    def __init__(self, chunks: list[bytes], hang: bool = False) -> None:
        self.chunks = list(chunks)
        self.hang = hang

    async def read(self, n: int) -> bytes:
        if self.chunks:
            return self.chunks.pop(0)
        if self.hang:
            await asyncio.Event().wait()
        return b""


class _Writer:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def _ping(chunks: list[bytes], hang: bool = False) -> str:
    writer = _Writer()
    result = asyncio.run(ping_stream(_Reader(chunks, hang), writer, 1.0))
    assert writer.data == PING
    return result


OK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOK"


@pytest.mark.parametrize("split", [1, 5, 17, len(OK_ANSWER)])
def test_ok_in_any_chunking(split: int) -> None:
    """200 OK is recognised however the bytes arrive, even if the peer keeps the stream open."""
    chunks = [OK_ANSWER[i:i + split] for i in range(0, len(OK_ANSWER), split)]
    assert _ping(chunks, hang=True) == ""


def test_ok_without_length_until_eof() -> None:
    """Without Content-Length the body runs to EOF."""
    assert _ping([b"HTTP/1.0 200 OK\r\n\r\n", b"OK"]) == ""


def test_wrong_answers() -> None:
    """Not HTTP, another status, another body, and silence are each described."""
    assert "not HTTP" in _ping([b"GET /_ping HTTP/1.1\r\n"], hang=True)
    assert "'HTTP/1.1 404 Not Found'" in _ping(
        [b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"])
    assert "instead of 200 OK" in _ping([b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong"])
    assert _ping([]) == "closed the connection without an answer"


def test_hang_times_out() -> None:
    """A peer that never answers raises TimeoutError (the check turns it into FAIL)."""
    with pytest.raises(TimeoutError):
        _ping([], hang=True)


def test_report_lines() -> None:
    """A failure prints its fix indented under it; the summary counts failures and skips."""
    checks = [Check("a", "ok", "fine"), Check("b", "FAIL", "broken", "do this"),
              Check("c", "skip", "skipped: 'b' did not pass")]
    assert render(checks[1]) == "FAIL  b: broken\n      fix: do this\n"
    assert summary(checks) == "1 check(s) failed, 1 skipped"
    assert summary(checks[:1]) == "all checks passed"
