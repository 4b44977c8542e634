#!/usr/bin/env bash
# Drift check (make test-latest): a throw-away env with the newest releases that
# pyproject.toml's ranges allow, ignoring the lock, then the unit, OpenSSH interop and
# stderr-is-JSON suites. A failure names every package that is newer than lock/dev.txt.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
PYTHON=${PYTHON:-python3}
venv=$repo/.cache/latest-venv
rm -rf "$venv"
"$PYTHON" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip
"$venv/bin/pip" install -q --disable-pip-version-check --upgrade -e '.[test]'
newer=$("$venv/bin/python" scripts/lockcheck.py lock/dev.txt 2>&1 | sed -n 's/^lockcheck: [^:]*: //p' \
        | grep -v "is locked but not installed" || true)
echo "test-latest: releases that differ from lock/dev.txt:" >&2
echo "${newer:-  (none)}" | sed 's/^/  /' >&2
status=0
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/unit tests/e2e/test_sshtune_interop.py \
    tests/e2e/test_stderr_json.py --deselect tests/unit/test_lock.py::test_locked_env_is_exactly_the_lock \
    || status=$?
if [ "$status" != 0 ]; then
    echo "test-latest: FAILED with the newest releases; suspects (newer than the lock):" >&2
    echo "${newer:-  (none: the failure is not a dependency upgrade)}" | sed 's/^/  /' >&2
fi
exit "$status"
