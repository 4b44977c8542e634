"""PyInstaller runtime hook of the shipped Linux relay: find_library without the compiler.

asyncssh looks for liboqs (twice) and nettle with ctypes.util.find_library at import. On
Linux that runs `ldconfig -p`, then `gcc -Wl,-t`, then `ld -t` for each name the ldconfig
cache lacks: a dozen subprocesses forked from the starting server where gcc is installed.
The shipped program asks only the places the dynamic loader itself uses: the ldconfig cache,
then LD_LIBRARY_PATH (`ld -t`). Only the frozen program is changed, never a user's Python.
"""

import ctypes.util
import functools
import sys

if sys.platform == "linux":

    @functools.cache
    def _find_library(name: str) -> str | None:
        util = ctypes.util
        return util._findSoname_ldconfig(name) or util._get_soname(util._findLib_ld(name))  # type: ignore[attr-defined]

    ctypes.util.find_library = _find_library
