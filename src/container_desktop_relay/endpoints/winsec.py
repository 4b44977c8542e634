"""Windows security descriptors through ctypes: the current user's SID, SDDL in and out."""

from __future__ import annotations

import ctypes
import sys
from ctypes import wintypes

if sys.platform != "win32":  # pragma: no cover - imported only on Windows
    raise ImportError("winsec is Windows-only")

__all__ = ["SecurityAttributes", "current_user_sid", "read_dacl"]

_advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)
_kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)

TOKEN_QUERY = 0x0008
TOKEN_USER_CLASS = 1  # TOKEN_INFORMATION_CLASS.TokenUser
SDDL_REVISION_1 = 1
SE_KERNEL_OBJECT = 6
DACL_SECURITY_INFORMATION = 0x4
ERROR_INSUFFICIENT_BUFFER = 122


class SECURITY_ATTRIBUTES(ctypes.Structure):
    """Win32 SECURITY_ATTRIBUTES."""

    _fields_ = [
        ("nLength", wintypes.DWORD),
        ("lpSecurityDescriptor", wintypes.LPVOID),
        ("bInheritHandle", wintypes.BOOL),
    ]


class _SID_AND_ATTRIBUTES(ctypes.Structure):
    _fields_ = [("Sid", wintypes.LPVOID), ("Attributes", wintypes.DWORD)]


_advapi32.OpenProcessToken.argtypes = [wintypes.HANDLE, wintypes.DWORD,
                                       ctypes.POINTER(wintypes.HANDLE)]
_advapi32.OpenProcessToken.restype = wintypes.BOOL
_advapi32.GetTokenInformation.argtypes = [wintypes.HANDLE, ctypes.c_int, wintypes.LPVOID,
                                          wintypes.DWORD, ctypes.POINTER(wintypes.DWORD)]
_advapi32.GetTokenInformation.restype = wintypes.BOOL
_advapi32.ConvertSidToStringSidW.argtypes = [wintypes.LPVOID,
                                             ctypes.POINTER(wintypes.LPWSTR)]
_advapi32.ConvertSidToStringSidW.restype = wintypes.BOOL
_advapi32.ConvertStringSecurityDescriptorToSecurityDescriptorW.argtypes = [
    wintypes.LPCWSTR, wintypes.DWORD, ctypes.POINTER(wintypes.LPVOID),
    ctypes.POINTER(wintypes.ULONG)]
_advapi32.ConvertStringSecurityDescriptorToSecurityDescriptorW.restype = wintypes.BOOL
_advapi32.ConvertSecurityDescriptorToStringSecurityDescriptorW.argtypes = [
    wintypes.LPVOID, wintypes.DWORD, wintypes.DWORD, ctypes.POINTER(wintypes.LPWSTR),
    ctypes.POINTER(wintypes.ULONG)]
_advapi32.ConvertSecurityDescriptorToStringSecurityDescriptorW.restype = wintypes.BOOL
_advapi32.GetSecurityInfo.argtypes = [
    wintypes.HANDLE, ctypes.c_int, wintypes.DWORD, ctypes.POINTER(wintypes.LPVOID),
    ctypes.POINTER(wintypes.LPVOID), ctypes.POINTER(wintypes.LPVOID),
    ctypes.POINTER(wintypes.LPVOID), ctypes.POINTER(wintypes.LPVOID)]
_advapi32.GetSecurityInfo.restype = wintypes.DWORD
_kernel32.GetCurrentProcess.restype = wintypes.HANDLE
_kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
_kernel32.LocalFree.argtypes = [wintypes.HLOCAL]
_kernel32.LocalFree.restype = wintypes.HLOCAL


def _fail(what: str) -> OSError:
    err = ctypes.get_last_error()
    return ctypes.WinError(err, f"{what}: {ctypes.FormatError(err).strip()}")


def current_user_sid() -> str:
    """The SID (``S-1-5-21-…``) of the user this process runs as, from its access token."""
    token = wintypes.HANDLE()
    if not _advapi32.OpenProcessToken(_kernel32.GetCurrentProcess(), TOKEN_QUERY,
                                      ctypes.byref(token)):
        raise _fail("OpenProcessToken")
    try:
        size = wintypes.DWORD()
        _advapi32.GetTokenInformation(token, TOKEN_USER_CLASS, None, 0, ctypes.byref(size))
        if ctypes.get_last_error() != ERROR_INSUFFICIENT_BUFFER:
            raise _fail("GetTokenInformation")
        buf = ctypes.create_string_buffer(size.value)
        if not _advapi32.GetTokenInformation(token, TOKEN_USER_CLASS, buf, size,
                                             ctypes.byref(size)):
            raise _fail("GetTokenInformation")
        user = _SID_AND_ATTRIBUTES.from_buffer(buf)
        text = wintypes.LPWSTR()
        if not _advapi32.ConvertSidToStringSidW(user.Sid, ctypes.byref(text)):
            raise _fail("ConvertSidToStringSidW")
        try:
            return str(text.value)
        finally:
            _kernel32.LocalFree(text)
    finally:
        _kernel32.CloseHandle(token)


class SecurityAttributes:
    """A SECURITY_ATTRIBUTES built from SDDL; keep it alive while handles are created with it."""

    def __init__(self, sddl: str) -> None:
        self.sddl = sddl
        self._descriptor = wintypes.LPVOID()
        if not _advapi32.ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl, SDDL_REVISION_1, ctypes.byref(self._descriptor), None
        ):
            raise _fail(f"ConvertStringSecurityDescriptorToSecurityDescriptorW({sddl!r})")
        self._sa = SECURITY_ATTRIBUTES(ctypes.sizeof(SECURITY_ATTRIBUTES), self._descriptor, False)

    @property
    def address(self) -> int:
        """The SECURITY_ATTRIBUTES pointer, as ``_winapi.CreateNamedPipe`` takes it."""
        if not self._descriptor:
            raise ValueError("security attributes already freed")
        return ctypes.addressof(self._sa)

    def free(self) -> None:
        """Release the descriptor (idempotent)."""
        if self._descriptor:
            _kernel32.LocalFree(self._descriptor)
            self._descriptor = wintypes.LPVOID()

    __del__ = free


def read_dacl(handle: int) -> str:
    """The DACL of kernel object ``handle`` (a pipe, a job) as SDDL text (``D:P(A;;GA;;;SY)``)."""
    descriptor = wintypes.LPVOID()
    dacl = wintypes.LPVOID()
    status = _advapi32.GetSecurityInfo(handle, SE_KERNEL_OBJECT, DACL_SECURITY_INFORMATION,
                                       None, None, ctypes.byref(dacl), None,
                                       ctypes.byref(descriptor))
    if status:
        raise ctypes.WinError(status, f"GetSecurityInfo: {ctypes.FormatError(status).strip()}")
    try:
        text = wintypes.LPWSTR()
        if not _advapi32.ConvertSecurityDescriptorToStringSecurityDescriptorW(
            descriptor, SDDL_REVISION_1, DACL_SECURITY_INFORMATION, ctypes.byref(text), None
        ):
            raise _fail("ConvertSecurityDescriptorToStringSecurityDescriptorW")
        try:
            return str(text.value)
        finally:
            _kernel32.LocalFree(text)
    finally:
        _kernel32.LocalFree(descriptor)
