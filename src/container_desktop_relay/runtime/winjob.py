"""Windows Job objects: a spawned child (wsl.exe) dies with the relay, even when it crashes.

The job is created with ``JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`` and only this process holds its
handle; Windows closes that handle when the process exits for any reason, which terminates
every process in the job. Processes the child starts after joining are in the job too. (On
POSIX the client puts the child in its own process group instead; this module is Windows-only.)
"""

from __future__ import annotations

import ctypes
import sys
from ctypes import wintypes

if sys.platform != "win32":  # pragma: no cover - imported only on Windows
    raise ImportError("winjob is Windows-only")

__all__ = ["KillOnCloseJob", "assign_kill_on_close"]

_kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)

JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x2000
JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS = 9
JOB_OBJECT_BASIC_PROCESS_ID_LIST_CLASS = 3
PROCESS_SET_QUOTA = 0x0100
PROCESS_TERMINATE = 0x0001
ERROR_MORE_DATA = 234


class _IO_COUNTERS(ctypes.Structure):
    _fields_ = [(name, ctypes.c_ulonglong) for name in (
        "ReadOperationCount", "WriteOperationCount", "OtherOperationCount",
        "ReadTransferCount", "WriteTransferCount", "OtherTransferCount")]


class _BASIC_LIMIT_INFORMATION(ctypes.Structure):
    _fields_ = [
        ("PerProcessUserTimeLimit", wintypes.LARGE_INTEGER),
        ("PerJobUserTimeLimit", wintypes.LARGE_INTEGER),
        ("LimitFlags", wintypes.DWORD),
        ("MinimumWorkingSetSize", ctypes.c_size_t),
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", wintypes.DWORD),
        ("Affinity", ctypes.c_size_t),
        ("PriorityClass", wintypes.DWORD),
        ("SchedulingClass", wintypes.DWORD),
    ]


class _EXTENDED_LIMIT_INFORMATION(ctypes.Structure):
    _fields_ = [
        ("BasicLimitInformation", _BASIC_LIMIT_INFORMATION),
        ("IoInfo", _IO_COUNTERS),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


_kernel32.CreateJobObjectW.argtypes = [wintypes.LPVOID, wintypes.LPCWSTR]
_kernel32.CreateJobObjectW.restype = wintypes.HANDLE
_kernel32.SetInformationJobObject.argtypes = [wintypes.HANDLE, ctypes.c_int, wintypes.LPVOID,
                                              wintypes.DWORD]
_kernel32.SetInformationJobObject.restype = wintypes.BOOL
_kernel32.QueryInformationJobObject.argtypes = [wintypes.HANDLE, ctypes.c_int, wintypes.LPVOID,
                                                wintypes.DWORD, wintypes.LPDWORD]
_kernel32.QueryInformationJobObject.restype = wintypes.BOOL
_kernel32.AssignProcessToJobObject.argtypes = [wintypes.HANDLE, wintypes.HANDLE]
_kernel32.AssignProcessToJobObject.restype = wintypes.BOOL
_kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
_kernel32.OpenProcess.restype = wintypes.HANDLE
_kernel32.TerminateJobObject.argtypes = [wintypes.HANDLE, wintypes.UINT]
_kernel32.TerminateJobObject.restype = wintypes.BOOL
_kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
_kernel32.CloseHandle.restype = wintypes.BOOL


def _fail(what: str) -> OSError:
    err = ctypes.get_last_error()
    return ctypes.WinError(err, f"{what}: {ctypes.FormatError(err).strip()}")


class KillOnCloseJob:
    """A Job object whose processes are terminated when its handle is closed."""

    def __init__(self) -> None:
        handle = _kernel32.CreateJobObjectW(None, None)
        if not handle:
            raise _fail("CreateJobObjectW")
        self.handle: int | None = handle
        info = _EXTENDED_LIMIT_INFORMATION()
        info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        if not _kernel32.SetInformationJobObject(
            handle, JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS, ctypes.byref(info),
            ctypes.sizeof(info),
        ):
            error = _fail("SetInformationJobObject")
            self.close()
            raise error

    def _handle(self) -> int:
        if self.handle is None:
            raise ValueError("job object is closed")
        return self.handle

    def assign(self, *, pid: int | None = None, process_handle: int | None = None) -> None:
        """Put a process, given by ``pid`` or by an open ``process_handle``, in the job."""
        if (pid is None) == (process_handle is None):
            raise TypeError("give exactly one of pid or process_handle")
        opened = None
        if pid is not None:
            opened = _kernel32.OpenProcess(PROCESS_SET_QUOTA | PROCESS_TERMINATE, False, pid)
            if not opened:
                raise _fail(f"OpenProcess({pid})")
            process_handle = opened
        try:
            if not _kernel32.AssignProcessToJobObject(self._handle(), process_handle):
                raise _fail("AssignProcessToJobObject")
        finally:
            if opened:
                _kernel32.CloseHandle(opened)

    def pids(self) -> list[int]:
        """Process ids currently in the job."""
        size = 64
        while True:
            class _List(ctypes.Structure):
                _fields_ = [("NumberOfAssignedProcesses", wintypes.DWORD),
                            ("NumberOfProcessIdsInList", wintypes.DWORD),
                            ("ProcessIdList", ctypes.c_size_t * size)]

            buf = _List()
            if _kernel32.QueryInformationJobObject(
                self._handle(), JOB_OBJECT_BASIC_PROCESS_ID_LIST_CLASS, ctypes.byref(buf),
                ctypes.sizeof(buf), None,
            ):
                return [int(p) for p in buf.ProcessIdList[: buf.NumberOfProcessIdsInList]]
            if ctypes.get_last_error() != ERROR_MORE_DATA:
                raise _fail("QueryInformationJobObject")
            size *= 4

    def terminate(self, exit_code: int = 1) -> None:
        """Terminate every process in the job now."""
        if not _kernel32.TerminateJobObject(self._handle(), exit_code):
            raise _fail("TerminateJobObject")

    def close(self) -> None:
        """Close the handle, which terminates the job's processes (idempotent)."""
        if self.handle is not None:
            _kernel32.CloseHandle(self.handle)
            self.handle = None


def assign_kill_on_close(pid: int | None = None, *,
                         process_handle: int | None = None) -> KillOnCloseJob:
    """Put a child (by ``pid`` or ``process_handle``) in a new kill-on-close job; return it.

    The child is terminated by ``job.close()`` or when this process exits, crash included
    (dropping the object leaks the handle rather than killing the child). Call it on a child
    created with ``CREATE_SUSPENDED`` and resume it afterwards (``winproc.resume_process``), so
    that it cannot start processes of its own outside the job.

    Raises:
        OSError: the process is gone, or it cannot be put in a job.
    """
    job = KillOnCloseJob()
    try:
        job.assign(pid=pid, process_handle=process_handle)
    except BaseException:
        job.close()
        raise
    return job
