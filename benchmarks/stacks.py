"""Summarize py-spy's raw stacks (`py-spy record --format raw`, e.g. from
`bench_serve.py --py-spy FILE`): per process, the share of samples each thread's entry point
took, then the functions with the most samples on top of the stack (self) and anywhere in it
(inclusive), so the API process's cost per token and the core's host time can be read apart.

    python benchmarks/stacks.py /tmp/serve.txt --top 25
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_PROCESS = re.compile(r'^process (?P<pid>\d+):"(?P<cmd>.*)"$', re.DOTALL)


def _short(frame: str) -> str:
    """'fn (path/to/file.py:12)' -> 'fn (file.py)'; line numbers would split one function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].rsplit('/', 1)[-1]})" if where else name


def _join_markers(parts: list[str]) -> list[str]:
    """Rejoin a process marker whose quoted command line held ';' (the frame separator)."""
    frames: list[str] = []
    for part in parts:
        if frames and frames[-1].startswith("process ") and not _PROCESS.match(frames[-1]):
            frames[-1] += ";" + part
        else:
            frames.append(part)
    return frames


def summarize(text: str, top: int) -> str:
    per_process: dict[str, list[tuple[list[str], int]]] = defaultdict(list)
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        frames = _join_markers(m["stack"].split(";"))
        process = "?"
        # --subprocesses nests a child's stacks under its parent's marker: the last one is it.
        marks = [i for i, f in enumerate(frames) if _PROCESS.match(f)]
        if marks:
            p = _PROCESS.match(frames[marks[-1]])
            assert p is not None
            process = f"pid {p['pid']} {p['cmd'][-70:]}"
            frames = frames[marks[-1] + 1 :]
        per_process[process].append(([_short(f) for f in frames], int(m["count"])))
    out: list[str] = []
    for process, stacks in sorted(per_process.items(), key=lambda kv: -sum(c for _, c in kv[1])):
        total = sum(c for _, c in stacks)
        entry: Counter[str] = Counter()
        leaf: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        for frames, count in stacks:
            # A thread's entry point: the first frame past threading's bootstrap.
            start = next((f for f in frames if not f.startswith("Thread.")), "?")
            entry[start if start != "Thread._bootstrap (threading.py)" else "?"] += count
            if frames:
                leaf[frames[-1]] += count
            for f in set(frames):
                inclusive[f] += count
        out.append(f"== {process}: {total} samples")
        out.append("  by thread entry:")
        out += [f"    {c / total:6.1%}  {f}" for f, c in entry.most_common(8)]
        out.append("  self (top of stack):")
        out += [f"    {c / total:6.1%}  {f}" for f, c in leaf.most_common(top)]
        out.append("  inclusive:")
        out += [f"    {c / total:6.1%}  {f}" for f, c in inclusive.most_common(top)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("file", type=Path)
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    print(summarize(args.file.read_text(), args.top))


if __name__ == "__main__":
    main()
