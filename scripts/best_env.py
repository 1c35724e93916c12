"""The --warm-env setting whose fresh loads were fastest on average in a bench_load.py log, as
`VAR=VALUE ...` (empty: the defaults won), so that one device call can pass the winner on:

    bash scripts/device_run.sh mapped
    env $(python3 scripts/best_env.py $OUT/mapped-load.log) bash scripts/device_run.sh target
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict

# "  ember (ring pinned ahead), 20 slots, VAR=1 VAR2=2 warm     0.44 s   36.33 GB/s"
LINE = re.compile(
    r"^\s*ember \([^)]*\), \d+ slots(?:, (?P<env>.*?))?\s+warm\s.*?(?P<gbs>[\d.]+) GB/s$"
)


def best_env(lines: list[str]) -> str:
    """The winning setting's text ("" for the defaults); "" when the log has no loads."""
    rates: dict[str, list[float]] = defaultdict(list)
    for line in lines:
        match = LINE.match(line.rstrip())
        if match:
            rates[match["env"] or ""].append(float(match["gbs"]))
    if not rates:
        return ""
    return max(rates, key=lambda env: sum(rates[env]) / len(rates[env]))


if __name__ == "__main__":
    with open(sys.argv[1]) as log:
        print(best_env(log.readlines()))
