"""The garbage collector around start-up, in each of `ember serve`'s two processes.

Importing torch, Triton and the engine leaves ~170,000 objects that the collector tracks (250,000
with collections held off, on the development machine), and full collections scan all of them,
stopping every thread that needs the GIL. While the imports run, each full collection rescans a
growing heap (20, 50 and 85 ms in a CPU server's start); after them, a fresh process is due one
soon, and in a load through the ring it landed inside every whole load (80-88 ms,
benchmarks/bench_gc.py). So a process holds collections off from its start
(`hold_collections`) and, once its imports are done, moves everything they left out of the
collector's reach and turns it back on (`freeze_import_heap`): later full collections scan only
what came after. The cyclic garbage the imports left (~7,000 objects there, no device memory)
is kept for good. EMBER_GC_FREEZE=0 leaves the collector as Python sets it. Torch-free.
"""

from __future__ import annotations

import gc

from ember.envflags import env_flag
from ember.startup_trace import trace


def _on() -> bool:
    return env_flag("EMBER_GC_FREEZE", True)


def hold_collections() -> None:
    """No collections until `freeze_import_heap`: call it before a process's heavy imports."""
    if _on():
        gc.disable()


def freeze_import_heap() -> None:
    """Everything tracked so far leaves the collector's reach; collections resume."""
    if _on():
        gc.freeze()
        gc.enable()
        trace(f"import heap frozen ({gc.get_freeze_count()} objects)")
