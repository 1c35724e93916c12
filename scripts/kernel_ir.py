"""Compile ember's decode attention kernel for a GPU architecture offline, with no GPU, and show
what the compiler made of it: registers and spills per thread, shared memory, how many shared
buffers each K/V tile gets (the software pipeline's depth), and the CTAs that fit on one SM.

Triton's wheel carries ptxas and cuobjdump, so this runs on the CPU-only development machine
(`pip install --target /tmp/tritonlib triton==3.6.0`, numpy < 2.4 ahead of it on PYTHONPATH for
the interpreter's sake):

    PYTHONPATH=/tmp/tritonlib:$PWD python scripts/kernel_ir.py                  # the defaults
    PYTHONPATH=/tmp/tritonlib:$PWD python scripts/kernel_ir.py --kv fp8 --block-n 128 \\
        --stages 3 5 --dump /tmp/kir                                              # + IR and SASS

Specialisation follows a decode launch on the GPU (16-aligned pointers and strides, ints equal to
1 as constants, Llama-3.1-8B heads, block size 16, one token per sequence), so the counts should
match what the GPU runs; check one against the GPU's own (CompiledKernel.n_regs) when in doubt.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ember.ops.triton_attention import _paged_attention_kernel

TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
REGISTERS_PER_SM = 65536
SHARED_PER_SM = 227 * 1024  # usable per SM on sm_90
KV_TYPES = {"bf16": "*bf16", "fp16": "*fp16", "fp8": "*fp8e4nv"}
POINTERS = ("q_ptr", "k_cache_ptr", "v_cache_ptr", "out_ptr", "part_acc_ptr", "part_max_ptr",
            "part_sum_ptr", "arrivals_ptr", "query_start_loc_ptr", "seq_lens_ptr",
            "block_tables_ptr")  # fmt: skip
ALIGNED_INTS = ("num_q_heads", "stride_q_tok", "stride_q_head", "stride_o_tok", "stride_o_head",
                "stride_k_block", "stride_k_slot", "stride_k_head", "stride_v_block",
                "stride_v_slot", "stride_v_head", "stride_bt_seq")  # fmt: skip


def compile_decode(
    kv: str,
    block_n: int,
    warps: int,
    stages: int,
    arch: int,
    split: bool,
    one_loop: bool = False,
    widen_v_early: bool = False,
) -> Any:
    """The decode kernel (SINGLE_TOKEN) compiled for sm_<arch>, as a Triton CompiledKernel."""
    k = _paged_attention_kernel
    types = {
        "q_ptr": "*bf16", "out_ptr": "*bf16", "k_cache_ptr": KV_TYPES[kv],
        "v_cache_ptr": KV_TYPES[kv], "part_acc_ptr": "*fp32", "part_max_ptr": "*fp32",
        "part_sum_ptr": "*fp32", "arrivals_ptr": "*i32", "query_start_loc_ptr": "*i32",
        "seq_lens_ptr": "*i32", "block_tables_ptr": "*i32", "scale": "fp32", "softcap": "fp32",
        "v_scale": "fp32",
    }  # fmt: skip
    constants = dict(
        HEAD_DIM=128, BLOCK_M=16, BLOCK_N=block_n, PAGE_SIZE=16, SINGLE_TOKEN=True,
        SKIP_SINGLE_TOKEN=False, SPLIT_KV=split, USE_WINDOW=False, USE_SOFTCAP=False,
        DOT_PRECISION="tf32", KV_FP8=kv == "fp8", V_EARLY=widen_v_early and kv == "fp8",
        ONE_LOOP=one_loop, PDL=arch >= 90,
        MERGE_CHUNK=4,
        tokens_per_tile=1,  # Triton turns an int argument equal to 1 into a constant
    )  # fmt: skip
    signature = {
        name: "constexpr" if name in constants else types.get(name, "i32") for name in k.arg_names
    }
    aligned = [*POINTERS, *ALIGNED_INTS]
    attrs = {(k.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = ASTSource(fn=k, signature=signature, constexprs=constants, attrs=attrs)
    options = {"num_warps": warps, "num_stages": stages}
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def resource_usage(cubin: bytes) -> str:
    """cuobjdump's resource-usage report of a cubin (Triton's wheel ships cuobjdump)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        return subprocess.run(
            [str(TOOLS / "cuobjdump"), "--dump-resource-usage", str(path)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip


def summary(ck: Any, warps: int, dump: Path | None, name: str) -> str:
    usage = resource_usage(ck.asm["cubin"])
    regs = int(re.search(r"REG:(\d+)", usage).group(1))  # type: ignore[union-attr]
    stack = int(re.search(r"STACK:(\d+)", usage).group(1))  # type: ignore[union-attr]
    if dump is not None:
        dump.mkdir(parents=True, exist_ok=True)
        cubin = dump / f"{name}.cubin"
        cubin.write_bytes(ck.asm["cubin"])
        (dump / f"{name}.ttgir").write_text(ck.asm["ttgir"])
        (dump / f"{name}.ptx").write_text(ck.asm["ptx"])
        sass = subprocess.run(
            [str(TOOLS / "cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True
        ).stdout
        (dump / f"{name}.sass").write_text(sass)
    buffers = sorted(
        set(re.findall(r"memdesc<(\d+)x128x\d+x|memdesc<(\d+)x\d+x128x", ck.asm["ttgir"]))
    )
    depth = max((int(a or b) for a, b in buffers), default=0)
    shared = ck.metadata.shared
    per_thread = -(-regs // 8) * 8
    by_regs = REGISTERS_PER_SM // (per_thread * 32 * warps)
    by_shared = SHARED_PER_SM // max(shared, 1)
    ctas = min(by_regs, by_shared)
    return (
        f"{name:<28} {regs:>5} {stack:>6} {shared / 1024:>8.1f} {depth:>8} {ctas:>6}"
        f" ({'registers' if by_regs <= by_shared else 'shared'})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kv", nargs="+", default=["bf16", "fp8"], choices=sorted(KV_TYPES))
    ap.add_argument("--block-n", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--stages", nargs="+", type=int, default=[2, 3, 5])
    ap.add_argument("--warps", nargs="+", type=int, default=[4])
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90, 89")
    ap.add_argument("--split", action="store_true", help="the split-KV variant")
    ap.add_argument("--one-loop", action="store_true", help="KernelConfig.one_loop")
    ap.add_argument(
        "--widen-v-early", action="store_true", help="KernelConfig.widen_v_early (fp8 only)"
    )
    ap.add_argument("--dump", type=Path, help="write TTGIR, PTX and SASS here")
    args = ap.parse_args()
    print(
        f"decode attention, Llama-3.1-8B heads, sm_{args.arch}: registers and stack per thread, "
        "shared KiB per CTA, K/V buffers, CTAs per SM (and what limits them)"
    )
    print(f"{'kernel':<28} {'regs':>5} {'stack':>6} {'shared':>8} {'buffers':>8} {'CTAs':>6}")
    for kv in args.kv:
        for block_n in args.block_n:
            for warps in args.warps:
                for stages in args.stages:
                    ck = compile_decode(
                        kv, block_n, warps, stages, args.arch, args.split, args.one_loop,
                        args.widen_v_early,
                    )  # fmt: skip
                    name = f"{kv}_n{block_n}_w{warps}_s{stages}"
                    name += "_1loop" if args.one_loop else ""
                    name += "_vearly" if args.widen_v_early and kv == "fp8" else ""
                    print(summary(ck, warps, args.dump, name), flush=True)


if __name__ == "__main__":
    main()
