#!/usr/bin/env bash
# Build dist/container-desktop-relay-linux: the relay as one PyInstaller executable that needs
# no Python where it runs (WSL distributions without python3; glibc >= the build machine's).
#
# The build venv (<repo>/.cache/dist-venv, or $CDR_DIST_VENV) holds PyInstaller and the
# project's runtime deps; it is rebuilt only when that list changes. The package itself is
# taken from src/ (no install), so a rebuild after a source change takes about 30 s.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=$repo/.cache
venv=${CDR_DIST_VENV:-$cache/dist-venv}
PYTHON=${PYTHON:-python3}
PYINSTALLER=${PYINSTALLER:-pyinstaller>=6.10,<7}
name=container-desktop-relay-linux
started=$SECONDS

mkdir -p "$cache"
deps=$("$PYTHON" - "$repo/pyproject.toml" <<'PY'
import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))
PY
)
stamp="$("$PYTHON" -c 'import sys; print(sys.version)' | head -1) $PYINSTALLER $(echo "$deps" | tr '\n' ' ')"
if [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "build-dist: creating the build venv $venv" >&2
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    mapfile -t dep_list <<<"$deps"
    "$venv/bin/pip" install -q --disable-pip-version-check "$PYINSTALLER" "${dep_list[@]}"
    echo "$stamp" >"$venv/.stamp"
fi

"$venv/bin/pyinstaller" --noconfirm --onefile --name "$name" \
    --paths "$repo/src" --distpath "$repo/dist" \
    --workpath "$cache/pyinstaller/work" --specpath "$cache/pyinstaller" \
    --log-level WARN "$repo/src/container_desktop_relay/__main__.py"
"$repo/dist/$name" --version >/dev/null
echo "build-dist: dist/$name ($(du -h "$repo/dist/$name" | cut -f1)) in $((SECONDS - started))s" >&2
