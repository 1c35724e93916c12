"""One attention launch for Nsight Compute to profile (`scripts/device_run.sh ncu ncuprefill`):
decode over Llama-3.1-8B heads, `--batch` sequences of `--ctx` keys, a bf16 or fp8 cache, the
default tiles or gpu_check's V_EARLY tiles (`--v-early`: V widened in registers, 3 stages; fp8's
default widens it too, at 5 stages). With `--prefill`, a causal prefill of `--batch` prompts of
`--ctx` tokens from a bf16 cache instead (`--tile M N WARPS STAGES` for other tiles than the
default). It launches three times; profile the third:

    ncu --clock-control none -k regex:paged_attention --launch-skip 2 --launch-count 1 \\
        --section SpeedOfLight --section WarpStateStats \\
        python3 scripts/ncu_attention.py --kv fp8
"""

from __future__ import annotations

import argparse

import torch

from ember.ops.triton_attention import KernelConfig, paged_attention_into
from scripts.gpu_check import LLAMA_8B, V_EARLY, cache_setup, prefill_setup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kv", choices=("bf16", "fp8"), default="bf16")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--ctx", type=int, default=640)
    ap.add_argument("--v-early", action="store_true", help="fp8: KernelConfig.widen_v_early")
    ap.add_argument("--prefill", action="store_true", help="a causal prefill of the prompts")
    ap.add_argument("--tile", nargs=4, type=int, metavar=("M", "N", "WARPS", "STAGES"))
    args = ap.parse_args()
    if args.prefill:
        prefill(args.batch, args.ctx, KernelConfig(*args.tile) if args.tile else None)
        return
    kv_dtype = torch.float8_e4m3fn if args.kv == "fp8" else torch.bfloat16
    setup = cache_setup(args.batch, args.ctx, kv_dtype)
    hq, _, d = LLAMA_8B
    out = torch.empty(args.batch, hq, d, device="cuda", dtype=torch.bfloat16)
    cfg = V_EARLY if args.v_early else None
    for _ in range(3):
        paged_attention_into(
            out, setup.qs[0], setup.k_cache, setup.v_cache, setup.mds[0], d**-0.5,
            decode_config=cfg,
        )  # fmt: skip
    torch.cuda.synchronize()
    print(f"decode attention launched: {args.kv} cache, {args.batch} x {args.ctx} keys, {cfg}")


def prefill(batch: int, length: int, cfg: KernelConfig | None) -> None:
    b, _ = prefill_setup(batch, length)
    out = torch.empty_like(b.q)
    d = LLAMA_8B[2]
    for _ in range(3):
        paged_attention_into(out, b.q, b.k_cache, b.v_cache, b.md, d**-0.5, prefill_config=cfg)
    torch.cuda.synchronize()
    print(f"prefill attention launched: {batch} x {length} tokens, {cfg}")


if __name__ == "__main__":
    main()
