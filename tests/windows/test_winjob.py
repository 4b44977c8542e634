"""winjob under Wine: a child in a kill-on-close job dies when its holder crashes."""

from __future__ import annotations

from winharness import HERE, Wine, scaled, winpath

SCRIPT = winpath(HERE / "win_job.py")


def test_child_in_job_dies_when_holder_is_killed(wine: Wine) -> None:
    """TerminateProcess on the holder (no cleanup runs) takes its jailed child with it."""
    result = wine.run_json([SCRIPT, "supervise", str(scaled(20))])
    assert result["job_pids"] == [result["child"]]
    assert result["exited"] is True


def test_child_outside_job_survives_holder(wine: Wine) -> None:
    """Control: without the job the child outlives its killed holder (the check can fail)."""
    result = wine.run_json([SCRIPT, "supervise", "--no-job", "2"])
    assert result["exited"] is False
