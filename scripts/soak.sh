#!/usr/bin/env bash
# `make soak`: the reliability suite at full size, repeated, then a report table.
# Bounded: SOAK_ROUNDS rounds (default 2) of faults, slow consumers (steady readers at
# 40-160 KiB/s, the docker CLI into a 40 KB/s consumer, --write-timeout) + hostile input,
# plus the full-size load
# (10,000 sequential, 1,000 concurrent x 1 MiB). Takes several minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${SOAK_ROUNDS:-2}"
mkdir -p .cache
report=".cache/reliability.jsonl"
: > "$report"
export CDR_SOAK=1 CDR_REPORT="$PWD/$report"
for round in $(seq 1 "$rounds"); do
    echo "== soak round $round/$rounds" >&2
    .venv/bin/python -m pytest -q -p no:cacheprovider tests/e2e/test_faults.py \
        tests/e2e/test_slow_consumers.py tests/e2e/test_hostile.py tests/e2e/test_disk_faults.py
done
.venv/bin/python -m pytest -q -p no:cacheprovider tests/e2e/test_load.py
.venv/bin/python scripts/reliability_table.py "$report"
