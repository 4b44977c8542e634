"""Windows process facts through kernel32: the parent's PID, a waitable handle, resuming a child.

``os.getppid()`` on Windows (CPython 3.12+) needs ``PssCaptureSnapshot``, which Wine 8 lacks;
a Toolhelp snapshot answers the same question on every Windows and under Wine. Windows-only.
"""

from __future__ import annotations

import ctypes
import sys
from ctypes import wintypes

if sys.platform != "win32":  # pragma: no cover - imported only on Windows
    raise ImportError("winproc is Windows-only")

__all__ = [
    "ProcessGone",
    "close_handle",
    "open_for_wait",
    "parent_pid",
    "process_name",
    "resume_process",
]

_kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)

TH32CS_SNAPPROCESS = 0x2
TH32CS_SNAPTHREAD = 0x4
SYNCHRONIZE = 0x00100000
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
THREAD_SUSPEND_RESUME = 0x0002
ERROR_INVALID_PARAMETER = 87
ERROR_NO_MORE_FILES = 18
INVALID_HANDLE_VALUE = wintypes.HANDLE(-1).value


class _PROCESSENTRY32W(ctypes.Structure):
    _fields_ = [
        ("dwSize", wintypes.DWORD),
        ("cntUsage", wintypes.DWORD),
        ("th32ProcessID", wintypes.DWORD),
        ("th32DefaultHeapID", ctypes.c_size_t),
        ("th32ModuleID", wintypes.DWORD),
        ("cntThreads", wintypes.DWORD),
        ("th32ParentProcessID", wintypes.DWORD),
        ("pcPriClassBase", wintypes.LONG),
        ("dwFlags", wintypes.DWORD),
        ("szExeFile", wintypes.WCHAR * 260),
    ]


class _THREADENTRY32(ctypes.Structure):
    _fields_ = [
        ("dwSize", wintypes.DWORD),
        ("cntUsage", wintypes.DWORD),
        ("th32ThreadID", wintypes.DWORD),
        ("th32OwnerProcessID", wintypes.DWORD),
        ("tpBasePri", wintypes.LONG),
        ("tpDeltaPri", wintypes.LONG),
        ("dwFlags", wintypes.DWORD),
    ]


_kernel32.CreateToolhelp32Snapshot.argtypes = [wintypes.DWORD, wintypes.DWORD]
_kernel32.CreateToolhelp32Snapshot.restype = wintypes.HANDLE
for _name, _entry in (("Process32FirstW", _PROCESSENTRY32W), ("Process32NextW", _PROCESSENTRY32W),
                      ("Thread32First", _THREADENTRY32), ("Thread32Next", _THREADENTRY32)):
    getattr(_kernel32, _name).argtypes = [wintypes.HANDLE, ctypes.POINTER(_entry)]
    getattr(_kernel32, _name).restype = wintypes.BOOL
_kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
_kernel32.OpenProcess.restype = wintypes.HANDLE
_kernel32.OpenThread.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
_kernel32.OpenThread.restype = wintypes.HANDLE
_kernel32.ResumeThread.argtypes = [wintypes.HANDLE]
_kernel32.ResumeThread.restype = wintypes.DWORD
_kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
_kernel32.CloseHandle.restype = wintypes.BOOL


class ProcessGone(OSError):
    """No process has that PID (it exited, or never existed)."""


def _fail(what: str) -> OSError:
    err = ctypes.get_last_error()
    return ctypes.WinError(err, f"{what}: {ctypes.FormatError(err).strip()}")


def _processes() -> list[_PROCESSENTRY32W]:
    snap = _kernel32.CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0)
    if not snap or snap == INVALID_HANDLE_VALUE:
        raise _fail("CreateToolhelp32Snapshot")
    try:
        entries = []
        entry = _PROCESSENTRY32W()
        entry.dwSize = ctypes.sizeof(entry)
        ok = _kernel32.Process32FirstW(snap, ctypes.byref(entry))
        while ok:
            copy = _PROCESSENTRY32W()
            ctypes.pointer(copy)[0] = entry
            entries.append(copy)
            ok = _kernel32.Process32NextW(snap, ctypes.byref(entry))
        return entries
    finally:
        _kernel32.CloseHandle(snap)


def parent_pid(pid: int) -> int:
    """The PID of the process that created ``pid`` (from a Toolhelp snapshot).

    Raises:
        ProcessGone: no process ``pid`` is in the snapshot.
        OSError: the snapshot cannot be taken.
    """
    for entry in _processes():
        if entry.th32ProcessID == pid:
            return int(entry.th32ParentProcessID)
    raise ProcessGone(f"no process with PID {pid}")


def process_name(pid: int) -> str:
    """The executable name of ``pid`` (``""`` when it is not running)."""
    for entry in _processes():
        if entry.th32ProcessID == pid:
            return str(entry.szExeFile)
    return ""


def open_for_wait(pid: int) -> int:
    """A handle to ``pid`` with ``SYNCHRONIZE`` (signalled when it exits); close it with
    :func:`close_handle`. The handle pins the process object, so a reused PID cannot fool a
    wait on it.

    Raises:
        ProcessGone: ``pid`` is not running.
        OSError: the process exists but cannot be opened (access denied).
    """
    handle = _kernel32.OpenProcess(SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        err = ctypes.get_last_error()
        if err == ERROR_INVALID_PARAMETER:
            raise ProcessGone(f"no process with PID {pid}")
        raise ctypes.WinError(err, f"OpenProcess({pid}): {ctypes.FormatError(err).strip()}")
    return int(handle)


def close_handle(handle: int) -> None:
    """Close a handle from :func:`open_for_wait`."""
    _kernel32.CloseHandle(handle)


def resume_process(pid: int) -> int:
    """Resume every thread of ``pid`` (a child created with ``CREATE_SUSPENDED``); returns how
    many threads were resumed.

    Raises:
        OSError: the snapshot cannot be taken or a thread cannot be resumed.
    """
    snap = _kernel32.CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0)
    if not snap or snap == INVALID_HANDLE_VALUE:
        raise _fail("CreateToolhelp32Snapshot")
    resumed = 0
    try:
        entry = _THREADENTRY32()
        entry.dwSize = ctypes.sizeof(entry)
        ok = _kernel32.Thread32First(snap, ctypes.byref(entry))
        while ok:
            if entry.th32OwnerProcessID == pid:
                thread = _kernel32.OpenThread(THREAD_SUSPEND_RESUME, False, entry.th32ThreadID)
                if not thread:
                    raise _fail(f"OpenThread({entry.th32ThreadID})")
                try:
                    if _kernel32.ResumeThread(thread) == 0xFFFFFFFF:
                        raise _fail("ResumeThread")
                finally:
                    _kernel32.CloseHandle(thread)
                resumed += 1
            ok = _kernel32.Thread32Next(snap, ctypes.byref(entry))
    finally:
        _kernel32.CloseHandle(snap)
    return resumed
