"""Job-object check (run by Windows CPython): does a child die when its holder crashes?

``supervise [--no-job]`` starts a holder; the holder spawns a long-sleeping child, puts it in a
kill-on-close job (unless --no-job) and reports; the supervisor then terminates the holder (a
crash: no cleanup runs) and waits, with a deadline, for the child to exit. ``suspended MARKER``
checks a child created suspended, jailed, then resumed. Prints JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import win32api
import win32con
import win32event
import win32process

SLEEPER = "import time; time.sleep(600)"
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000


def holder(use_job: bool) -> None:
    """Spawn the child, maybe jail it, report, then wait to be killed."""
    child = subprocess.Popen([sys.executable, "-c", SLEEPER], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    job_pids: list[int] = []
    if use_job:
        from container_desktop_relay.runtime.winjob import assign_kill_on_close

        job = assign_kill_on_close(child.pid)
        job_pids = job.pids()
    print(json.dumps({"child": child.pid, "job_pids": job_pids}), flush=True)
    sys.stdin.read()  # until the supervisor kills us


def supervise(use_job: bool, deadline: float) -> dict[str, object]:
    """Run a holder, crash it, see whether its child survives."""
    args = [sys.executable, __file__, "holder"] + ([] if use_job else ["--no-job"])
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    report = json.loads(proc.stdout.readline())
    child = win32api.OpenProcess(
        win32con.SYNCHRONIZE | win32con.PROCESS_TERMINATE | PROCESS_QUERY_LIMITED_INFORMATION,
        False, report["child"])
    win32api.TerminateProcess(int(proc._handle), 9)  # type: ignore[attr-defined]
    proc.wait()
    started = time.monotonic()
    waited = win32event.WaitForSingleObject(child, int(deadline * 1000))
    exited = waited == win32event.WAIT_OBJECT_0
    result = {"child": report["child"], "job_pids": report["job_pids"], "exited": exited,
              "seconds": time.monotonic() - started,
              "exit_code": win32process.GetExitCodeProcess(child) if exited else None}
    if not exited:
        win32api.TerminateProcess(child, 1)
    return result


def suspended(marker: str) -> dict[str, object]:
    """Spawn a child that would write ``marker`` CREATE_SUSPENDED, as spawn.py spawns wsl.exe:
    it must not run until resumed, must be in the job before, and must run after."""
    from container_desktop_relay.runtime.winjob import assign_kill_on_close
    from container_desktop_relay.runtime.winproc import resume_process

    child = subprocess.Popen(
        [sys.executable, "-c", f"open(r'{marker}', 'w').write('ran')"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        creationflags=0x00000004)  # CREATE_SUSPENDED
    time.sleep(1.0)  # a control window: a child that was not suspended would have run
    ran_before = os.path.exists(marker)
    job = assign_kill_on_close(child.pid)
    in_job = job.pids() == [child.pid]
    resumed = resume_process(child.pid)
    code = child.wait(timeout=60)
    job.close()
    return {"ran_before_resume": ran_before, "in_job_before_resume": in_job,
            "threads_resumed": resumed, "exit_code": code, "ran": os.path.exists(marker)}


if __name__ == "__main__":
    role, *flags = sys.argv[1:]
    if role == "suspended":
        print(json.dumps(suspended(flags[0])), flush=True)
        sys.exit(0)
    if role == "holder":
        holder("--no-job" not in flags)
    else:
        print(json.dumps(supervise("--no-job" not in flags,
                                   float(flags[-1]) if flags and flags[-1][0].isdigit()
                                   else 20.0)), flush=True)
