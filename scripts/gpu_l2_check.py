"""gpu_check --section l2: does pulling a projection's weight into L2 beside attention pay?

For the batch-1 o projection (Llama-8B, 4096 x 4096 bf16) and the qkv projection (6144 x 4096):
L2 is flushed (a 512 MB read), then the prefetch kernel (ember/ops/triton_prefetch.py) runs on a
side stream while the main stream idles for a fixed time (torch.cuda._sleep standing in for the
attention kernels), then the matmul runs. Printed per variant: the matmul's µs alone, the whole
chain's (idle + join + matmul), and the matmul's read rate. `none` is today's path; `hot` runs the
matmul right after the same matmul (the weight as warm as L2 makes it).
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from ember.ops.triton_prefetch import MODE_BULK, MODE_LINE, MODE_LOAD, l2_prefetch

# name -> (mode, chunk bytes, chunks a program), or None: no prefetch
VARIANTS: dict[str, tuple[int, int, int] | None] = {
    "none": None,
    "bulk 4K": (MODE_BULK, 4096, 128),
    "bulk 16K": (MODE_BULK, 16384, 32),
    "bulk 64K": (MODE_BULK, 65536, 8),
    "line": (MODE_LINE, 128, 128),
    "load 4K": (MODE_LOAD, 4096, 4),
}
IDLE_US = (0, 8, 12, 100)
REPS = 15


def _cycles_per_us() -> float:
    torch.cuda._sleep(1000)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(1_000_000)
    end.record()
    end.synchronize()
    return 1_000_000 / (start.elapsed_time(end) * 1000)


def _run(
    w: torch.Tensor,
    x: torch.Tensor,
    flush: torch.Tensor,
    side: torch.cuda.Stream,
    variant: tuple[int, int, int] | str | None,
    idle_cycles: int,
) -> tuple[float, float]:
    """Median (matmul µs, chain µs) over REPS flushed runs."""
    main = torch.cuda.current_stream()
    mm, chain = [], []
    for _ in range(REPS):
        flush.sum()
        events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        events[0].record()
        if variant == "hot":
            F.linear(x, w)
        elif variant is not None:
            assert not isinstance(variant, str)
            side.wait_stream(main)
            with torch.cuda.stream(side):
                l2_prefetch(w, variant[0], chunk=variant[1], block=variant[2])
        if idle_cycles:
            torch.cuda._sleep(idle_cycles)
        main.wait_stream(side)
        events[1].record()
        F.linear(x, w)
        events[2].record()
        events[2].synchronize()
        mm.append(events[1].elapsed_time(events[2]) * 1000)
        chain.append(events[0].elapsed_time(events[2]) * 1000)
    return statistics.median(mm), statistics.median(chain)


def section_l2(args: argparse.Namespace) -> bool:
    torch.manual_seed(0)
    flush = torch.ones(512 << 20, dtype=torch.uint8, device="cuda")
    x = torch.randn(1, 4096, dtype=torch.bfloat16, device="cuda")
    weights = {
        "o 4096x4096": torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda"),
        "qkv 6144x4096": torch.randn(6144, 4096, dtype=torch.bfloat16, device="cuda"),
    }
    side = torch.cuda.Stream()
    per_us = _cycles_per_us()
    print(f"clock for torch.cuda._sleep: {per_us:.0f} cycles/us")
    print(
        f"{'weight':<14} {'idle us':>7} {'variant':<9} {'matmul us':>9} {'chain us':>8} {'GB/s':>7}"
    )
    for name, w in weights.items():
        mb = w.numel() * w.element_size() / 1e6
        for idle in IDLE_US:
            variants: list[tuple[str, tuple[int, int, int] | str | None]] = list(VARIANTS.items())
            if idle == 0:
                variants.append(("hot", "hot"))
            for label, variant in variants:
                mm, chain = _run(w, x, flush, side, variant, int(idle * per_us))
                print(
                    f"{name:<14} {idle:>7} {label:<9} {mm:>9.1f} {chain:>8.1f} {mb / mm * 1e3:>7.0f}",
                    flush=True,
                )
    return True
