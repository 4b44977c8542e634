#!/usr/bin/env bash
# Build the shipped artifacts into dist/, each from the lock, each only when its inputs changed.
#
#   build-dist.sh linux     dist/container-desktop-relay-linux/  the Linux relay (one folder;
#                           --relay-program-path names the executable inside it)
#   build-dist.sh windows   dist/container-desktop-relay/        container-desktop-relay.exe and
#                           its folder: PyInstaller run under Wine by the Windows CPython that
#                           scripts/setup-wine.sh prepares (lock/windows.txt)
#   build-dist.sh python    dist/*.whl, dist/*.tar.gz            wheel and sdist (lock/dev.txt's
#                           setuptools, no build isolation, so nothing unlocked is fetched)
#   build-dist.sh all       all three, then dist/SHA256SUMS over every file (sha256sum -c)
#
# Both executables come from one spec file, packaging/container-desktop-relay.spec (the Windows
# workflow uses it too). A one-folder build, not one-file: a one-file program runs the relay
# in a child of a bootloader, so killing the started process left the relay running (pyinstaller
# #4858, #9016), and it unpacked ~33 MB at every start.
#
# Cache: each artifact records the sha256 of its inputs (lock, packaging/, this script, src/,
# the build Python) in .cache/dist-stamps/<artifact>; an unchanged tree does not rebuild.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=$repo/.cache
dist=$repo/dist
spec=$repo/packaging/container-desktop-relay.spec
stamps=$cache/dist-stamps
PYTHON=${PYTHON:-python3}
say() { printf 'build-dist: %s\n' "$*" >&2; }
mkdir -p "$cache" "$stamps" "$dist"

# sha256 over the named files and every file under src/ and packaging/ (names and contents),
# plus extra text.
inputs_hash() {
    local extra=$1; shift
    {
        printf '%s\n' "$extra"
        (cd "$repo" && find src packaging -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
            ! -path '*.egg-info/*' -print0 \
            | sort -z | xargs -0 sha256sum)
        (cd "$repo" && sha256sum "$@")
    } | sha256sum | cut -d' ' -f1
}

fresh() {  # fresh ARTIFACT HASH PATH: the recorded hash matches and the output exists
    [ -e "$3" ] && [ "$(cat "$stamps/$1" 2>/dev/null)" = "$2" ]
}

build_linux() {
    local venv=${CDR_DIST_VENV:-$cache/dist-venv} name=container-desktop-relay-linux
    local pyver stamp hash started=$SECONDS
    pyver=$("$PYTHON" -c 'import sys; print(sys.version.split()[0])')
    # Exactly lock/dist.txt (runtime deps + PyInstaller, hash-checked); rebuilt when it changes.
    stamp="$pyver $(sha256sum "$repo/lock/dist.txt")"
    if [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
        say "creating the build venv $venv from lock/dist.txt"
        rm -rf "$venv"
        "$PYTHON" -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check --require-hashes --no-deps \
            -r "$repo/lock/dist.txt" 2> >(grep -v "^WARNING: Location" >&2)
        "$venv/bin/python" "$repo/scripts/lockcheck.py" "$repo/lock/dist.txt"
        echo "$stamp" >"$venv/.stamp"
    fi
    hash=$(inputs_hash "linux $pyver" lock/dist.txt packaging/container-desktop-relay.spec \
        scripts/build-dist.sh)
    if fresh linux "$hash" "$dist/$name/$name"; then
        say "dist/$name is up to date"
        return
    fi
    rm -f "$stamps/linux"
    [ -d "$dist/$name" ] || rm -f "$dist/$name"  # the one-file build of earlier versions
    "$venv/bin/pyinstaller" --noconfirm --distpath "$dist" \
        --workpath "$cache/pyinstaller/linux" --log-level WARN "$spec"
    "$dist/$name/$name" --version >/dev/null
    echo "$hash" >"$stamps/linux"
    say "dist/$name/ ($(du -sh "$dist/$name" | cut -f1)) in $((SECONDS - started))s"
}

# A subshell: the Wine environment (WINEPREFIX, PYTHONPYCACHEPREFIX=Z:...) must not reach the
# Linux Pythons of the other steps.
build_windows() (
    local name=container-desktop-relay hash started=$SECONDS wine_dir
    wine_dir=${CDR_WINE_DIR:-$cache/wine}
    # Wine, the Windows CPython and lock/windows.txt (PyInstaller included); idempotent.
    PYTHON="$PYTHON" bash "$repo/scripts/setup-wine.sh"
    hash=$(inputs_hash "windows $(cat "$wine_dir/wheels.stamp")" lock/windows.txt \
        lock/wine-python.txt packaging/container-desktop-relay.spec scripts/build-dist.sh)
    if fresh windows "$hash" "$dist/$name/$name.exe"; then
        say "dist/$name is up to date"
        return
    fi
    rm -f "$stamps/windows"
    # shellcheck disable=SC1091
    source "$wine_dir/env"
    unset PYTHONDONTWRITEBYTECODE
    export PYTHONPYCACHEPREFIX="Z:${wine_dir//\//\\}\\pycache"
    local winrepo="Z:${repo//\//\\}"
    # Wine's services inherit the first wine call's stdio: start them on /dev/null. Windows
    # CPython needs its stdio to be pipes, not files (docs/windows.md).
    timeout 120 wine cmd /c exit </dev/null >/dev/null 2>&1
    # Its output goes through a pipe into the log: Windows CPython cannot start on file stdio.
    local status attempt log=$cache/pyinstaller-windows.log
    # Wine itself, not the build, sometimes fails to start PyInstaller's isolated helper
    # process ("[WinError 1359] Internal error" from CreateProcess, seen once in ~20 CI runs):
    # that one error gets a second attempt on a fresh wineserver; any other failure stops here.
    for attempt in 1 2; do
        status=0
        true | timeout -k 10 1800 wine "$CDR_WINE_PYTHON" -m PyInstaller --noconfirm \
            --distpath "$winrepo\\dist" --workpath "$winrepo\\.cache\\pyinstaller\\windows" \
            --log-level WARN "$winrepo\\packaging\\container-desktop-relay.spec" 2>&1 \
            | cat >"$log" || status=${PIPESTATUS[1]}
        grep -v -e "^$" -e "Wine" "$log" >&2 || true
        if [ "$status" = 0 ] && [ -f "$dist/$name/$name.exe" ]; then
            break
        fi
        timeout 30 wineserver -k 2>/dev/null || true
        if [ "$attempt" = 1 ] && grep -q "WinError 1359" "$log"; then
            say "Wine could not start a process (WinError 1359); building once more"
            timeout 120 wine cmd /c exit </dev/null >/dev/null 2>&1
            continue
        fi
        say "PyInstaller under Wine failed (status $status)"
        return 1
    done
    local version
    version=$(true | timeout 120 wine "$dist/$name/$name.exe" --version 2>&1 | cat)
    timeout 30 wineserver -k 2>/dev/null || true
    case $version in
        "container-desktop-relay "*) ;;
        *) say "the built .exe did not answer --version: $version"; return 1 ;;
    esac
    echo "$hash" >"$stamps/windows"
    say "dist/$name/$name.exe ($(du -sh "$dist/$name" | cut -f1)) in $((SECONDS - started))s"
)

build_python() {
    local hash started=$SECONDS
    hash=$(inputs_hash "python" pyproject.toml MANIFEST.in README.md LICENSE CHANGELOG.md \
        lock/dev.txt scripts/build-dist.sh)
    if fresh python "$hash" "$(ls "$dist"/*.whl 2>/dev/null | head -1)"; then
        say "wheel and sdist are up to date"
        return
    fi
    rm -f "$stamps/python" "$dist"/*.whl "$dist"/*.tar.gz
    local out
    if ! out=$("$PYTHON" -m build --no-isolation --outdir "$dist" "$repo" 2>&1); then
        echo "$out" >&2
        return 1
    fi
    echo "$hash" >"$stamps/python"
    say "$(cd "$dist" && ls ./*.whl ./*.tar.gz | tr '\n' ' ')in $((SECONDS - started))s"
}

sums() {
    # Written outside dist/ first: a file being written there would list itself.
    (cd "$dist" && find . -type f ! -name SHA256SUMS -printf '%P\0' | sort -z \
        | xargs -0 sha256sum >"$cache/SHA256SUMS.new")
    mv "$cache/SHA256SUMS.new" "$dist/SHA256SUMS"
    say "dist/SHA256SUMS: $(wc -l <"$dist/SHA256SUMS") files"
}

case ${1:-all} in
    linux) build_linux ;;
    windows) build_windows ;;
    python) build_python ;;
    all) build_linux; build_windows; build_python; sums ;;
    *) echo "usage: build-dist.sh [linux|windows|python|all]" >&2; exit 2 ;;
esac
