"""Render the reliability report (JSON lines written by the suite under CDR_REPORT) as a table."""

from __future__ import annotations

import json
import sys
from collections import defaultdict

#: Row groups in table order (rows of one kind keep the order the suite wrote them in).
KINDS = ("fault", "slow", "hostile", "disk", "load", "leaks")


def main(path: str) -> int:
    rows: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    with open(path) as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                rows[(str(row["kind"]), str(row["what"]))].append(row)
    print("| kind | what was tried | times | streams | what happened (last run) | bytes lost |")
    print("|---|---|---|---|---|---|")
    order = {kind: i for i, kind in enumerate(KINDS)}
    for (kind, what), runs in sorted(rows.items(), key=lambda kv: order.get(kv[0][0], len(order))):
        streams = sum(int(r["runs"]) for r in runs)  # type: ignore[call-overload]
        lost = sum(int(r.get("silently_lost", 0)) for r in runs)  # type: ignore[call-overload]
        print(f"| {kind} | {what} | {len(runs)} | {streams} | {runs[-1]['outcome']} | {lost} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
