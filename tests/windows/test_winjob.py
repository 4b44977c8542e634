"""winjob under Wine: a child in a kill-on-close job dies when its holder crashes; a child
created suspended is in the job before it runs."""

from __future__ import annotations

from pathlib import Path

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


def test_suspended_child_joins_the_job_before_it_runs(wine: Wine, tmp_path: Path) -> None:
    """As spawn.py starts wsl.exe: created suspended, the child does not run, is put in the
    job, and runs once winproc.resume_process resumes its thread."""
    marker = tmp_path / "ran"
    result = wine.run_json([SCRIPT, "suspended", winpath(marker)])
    assert result == {"ran_before_resume": False, "in_job_before_resume": True,
                      "threads_resumed": 1, "exit_code": 0, "ran": True}
