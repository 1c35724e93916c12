"""scripts/best_env.py: the device call's pick of the fastest --warm-env setting."""

from __future__ import annotations

from scripts.best_env import best_env

LOG = """page cache -> host memory, 16 threads: 56.63 GB/s
  ember (ring pinned ahead), 20 slots warm     0.48 s   33.56 GB/s
      weights: 16.06 GB in 4 files in 0.44 s (36.30 GB/s)
  ember (ring pinned ahead), 20 slots, EMBER_MAPPED_COPIERS=4 warm     0.44 s   36.33 GB/s
  ember (ring pinned ahead), 20 slots, A=1 B=2 warm     0.40 s   40.00 GB/s
  ember (ring pinned ahead), 20 slots warm     0.46 s   35.18 GB/s
  ember (ring pinned ahead), 20 slots, EMBER_MAPPED_COPIERS=4 warm     0.45 s   35.88 GB/s
  ember (ring pinned ahead), 20 slots, A=1 B=2 warm     0.80 s   20.00 GB/s
"""


def test_the_best_mean_wins_and_the_loaders_own_lines_do_not_count() -> None:
    assert best_env(LOG.splitlines()) == "EMBER_MAPPED_COPIERS=4"


def test_the_defaults_winning_and_an_empty_log_give_no_setting() -> None:
    lines = [line for line in LOG.splitlines() if "COPIERS" not in line and "A=1" not in line]
    assert best_env(lines) == ""
    assert best_env([]) == ""
