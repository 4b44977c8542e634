#!/usr/bin/env bash
# Build dist/container-desktop-relay-linux: the relay as one PyInstaller executable that needs
# no Python where it runs (WSL distributions without python3; glibc >= the build machine's).
#
# The build venv (<repo>/.cache/dist-venv, or $CDR_DIST_VENV) holds exactly lock/dist.txt
# (PyInstaller and the project's runtime deps); it is rebuilt only when that lock changes.
# The package itself is taken from src/ (no install), so a rebuild after a source change
# takes about 30 s.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=$repo/.cache
venv=${CDR_DIST_VENV:-$cache/dist-venv}
PYTHON=${PYTHON:-python3}
name=container-desktop-relay-linux
started=$SECONDS

mkdir -p "$cache"
# Exactly lock/dist.txt (runtime deps + PyInstaller, hash-checked); rebuilt when it changes.
stamp="$("$PYTHON" -c 'import sys; print(sys.version)' | head -1) $(sha256sum "$repo/lock/dist.txt")"
if [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "build-dist: creating the build venv $venv from lock/dist.txt" >&2
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check --require-hashes --no-deps \
        -r "$repo/lock/dist.txt"
    "$venv/bin/python" "$repo/scripts/lockcheck.py" "$repo/lock/dist.txt"
    echo "$stamp" >"$venv/.stamp"
fi

"$venv/bin/pyinstaller" --noconfirm --onefile --name "$name" \
    --paths "$repo/src" --distpath "$repo/dist" \
    --workpath "$cache/pyinstaller/work" --specpath "$cache/pyinstaller" \
    --log-level WARN "$repo/src/container_desktop_relay/__main__.py"
"$repo/dist/$name" --version >/dev/null
echo "build-dist: dist/$name ($(du -h "$repo/dist/$name" | cut -f1)) in $((SECONDS - started))s" >&2
