"""Per-file progress for `ember pull` on stderr: a tqdm bar per file on a terminal, else plain
lines (start, every quarter, done) that read well in logs."""

from __future__ import annotations

import sys
from typing import Any, TextIO

MiB = 1024 * 1024


def _mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


class FileBars:
    """Called as (file name, bytes done, bytes total) while files copy, one file at a time."""

    def __init__(self, stream: TextIO | None = None, bars: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self._bars = self.stream.isatty() if bars is None else bars
        self._name: str | None = None
        self._bar: Any = None
        self._quarter = 0

    def __call__(self, name: str, done: int, total: int) -> None:
        if name != self._name:
            self._start(name, done, total)
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
        elif done >= total or done * 4 >= (self._quarter + 1) * total:
            self._quarter = 4 if done >= total else done * 4 // max(total, 1)
            state = "done" if done >= total else f"{100 * done // max(total, 1)}%"
            print(f"  {name}: {state} ({_mib(done)} of {_mib(total)})", file=self.stream)
        if done >= total:
            self.close()

    def _start(self, name: str, done: int, total: int) -> None:
        self.close()
        self._name = name
        self._quarter = done * 4 // max(total, 1)
        if done and done < total:
            print(f"  {name}: resuming at {_mib(done)} of {_mib(total)}", file=self.stream)
        if self._bars:
            try:
                from tqdm import tqdm
            except ImportError:
                self._bars = False
                return
            self._bar = tqdm(
                total=total,
                initial=done,
                desc=name,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=self.stream,
                leave=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = None
        self._name = None
