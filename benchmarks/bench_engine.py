"""ember vs transformers `generate` on one GPU, same shapes, same run.

Random weights with real shapes (load_format="dummy"), fixed output lengths (ignore EOS).
Prints decode tok/s at batch 1 with achieved GB/s (weight bytes x steps/s) as a share of the HBM
bandwidth measured in this run, and end-to-end output tok/s for larger batches, with ratios.

    python benchmarks/bench_engine.py --shape llama-3.1-8b
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    SHAPES,
    dummy_model_dir,
    gemm_peak_tflops,
    hbm_bandwidth_gbs,
    launched_ahead,
    param_bytes,
    prefill_flops_per_token,
    random_prompts,
    workload_bound,
)
from ember.engine.args import KV_CACHE_DTYPES


def ember_runs(
    model_dir: Path, args: argparse.Namespace, hbm: float, weights: int, gemm_tflops: float
) -> dict[str, Any]:
    from ember import LLM, SamplingParams
    from ember.engine.core import StepTimes

    flops_per_token = prefill_flops_per_token(SHAPES[args.shape], args.input_len)

    t0 = time.perf_counter()
    llm = LLM(
        str(model_dir),
        dtype="bfloat16",
        device="cuda",
        load_format="dummy",
        max_model_len=args.max_model_len,
        max_num_seqs=max(args.batches),
        max_num_batched_tokens=args.max_num_batched_tokens,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enforce_eager=args.enforce_eager,
        kv_cache_dtype=args.kv_cache_dtype,
        async_scheduling=args.async_scheduling,
        capture_all_graphs=True,  # steady-state throughput: no capture inside a timed run
    )
    startup = time.perf_counter() - t0
    core = llm.engine.core
    if args.sync_debug:
        # Every operation that waits for the GPU from here on warns once per source line: a
        # step should wait once (reading its tokens), async scheduling one step behind.
        warnings.simplefilter("default")
        torch.cuda.set_sync_debug_mode("warn")
    print(
        f"ember start-up {startup:.1f} s (graph capture {core.graph_capture_s:.1f} s, "
        f"KV blocks {core.kv.num_blocks})",
        flush=True,
    )
    vocab = SHAPES[args.shape]["vocab_size"]

    def run(prompts: list[list[int]], out_len: int) -> float:
        params = SamplingParams(
            temperature=0.0, max_tokens=out_len, ignore_eos=True, detokenize=False
        )
        torch.cuda.synchronize()
        core.step_times = StepTimes()
        ahead = launched_ahead(core)
        t = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
        torch.cuda.synchronize()
        assert all(len(o.outputs[0].token_ids) == out_len for o in outs)
        elapsed = time.perf_counter() - t
        print(
            f"  [{len(prompts)} x {out_len}] {elapsed:.3f} s; {core.step_times.summary()}; "
            f"{launched_ahead(core) - ahead} launched ahead"
        )
        return elapsed

    results: dict[str, Any] = {"startup_s": startup}
    p1 = random_prompts(1, args.input_len_b1, vocab, seed=1)
    run(p1, 8)  # warm-up
    # Mixed steps (prefill chunks beside decoding rows) run kernel variants of their own, which
    # Triton compiles on first use (~0.1-0.3 s each): a chunk's worth of prompts and a few more
    # meets them here rather than in the first timed batch (as `ember serve` does before ready).
    mixed = args.max_num_batched_tokens // args.input_len + 8
    run(random_prompts(mixed, args.input_len, vocab, seed=999), 4)
    t_short = run(p1, 1)
    t_long = run(p1, args.output_len_b1 + 1)
    decode = args.output_len_b1 / (t_long - t_short)
    gbs = weights * decode / 1e9
    results["b1_decode_tok_s"] = decode
    print(
        f"ember batch 1: decode {decode:.1f} tok/s, {gbs:.0f} GB/s = {100 * gbs / hbm:.0f}% of HBM; "
        f"TTFT {1000 * t_short:.1f} ms",
        flush=True,
    )
    for b in args.batches:
        # Different prompts for the two runs: the prefix cache must not serve the second.
        t_prefill = run(random_prompts(b, args.input_len, vocab, seed=1000 + b), 1)
        t = run(random_prompts(b, args.input_len, vocab, seed=b), args.output_len)
        results[f"b{b}_out_tok_s"] = b * args.output_len / t
        step = (t - t_prefill) / (args.output_len - 1)  # the decode steps, roughly
        prefill_tflops = b * args.input_len * flops_per_token / t_prefill / 1e12
        print(
            f"ember batch {b}: {args.input_len} in / {args.output_len} out: {t:.2f} s, "
            f"{b * args.output_len / t:.0f} output tok/s (prefill alone {t_prefill:.2f} s = "
            f"{b * args.input_len / t_prefill:.0f} tok/s, {prefill_tflops:.0f} TFLOP/s = "
            f"{100 * prefill_tflops / gemm_tflops:.0f}% of the GEMM peak; then "
            f"{1e3 * step:.1f} ms per step)",
            flush=True,
        )
        bound = workload_bound(
            SHAPES[args.shape],
            b,
            args.input_len,
            args.output_len,
            gemm_tflops,
            hbm,
            kv_elem=1 if args.kv_cache_dtype.startswith("fp8") else 2,
        )
        out = b * args.output_len
        print(
            f"  bounds at this run's GEMM peak and HBM rate: {out / bound.serial_s:.0f} tok/s with "
            f"each step's KV reads after its matmuls ({100 * bound.serial_s / t:.0f}% reached), "
            f"{out / bound.roofline_s:.0f} at each step's roofline "
            f"({100 * bound.roofline_s / t:.0f}%), {out / bound.compute_s:.0f} with every FLOP "
            f"at the peak and all reads hidden ({100 * bound.compute_s / t:.0f}%)",
            flush=True,
        )
    llm.engine.core.abort([])
    return results


def transformers_runs(args: argparse.Namespace, hbm: float, weights: int) -> dict[str, Any]:
    import transformers as tf

    cfg = dict(SHAPES[args.shape])
    cfg.pop("architectures")
    model_type = cfg.pop("model_type")
    config = tf.AutoConfig.for_model(model_type, **cfg)
    with torch.device("cuda"):
        model = tf.AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16).eval()
    vocab = cfg["vocab_size"]

    def run(prompts: list[list[int]], out_len: int) -> float:
        ids = torch.tensor(prompts, device="cuda")
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=out_len,
                min_new_tokens=out_len,
                do_sample=False,
                pad_token_id=0,
            )
        torch.cuda.synchronize()
        assert out.shape[1] == ids.shape[1] + out_len
        return time.perf_counter() - t

    results: dict[str, Any] = {}
    p1 = random_prompts(1, args.input_len_b1, vocab, seed=1)
    run(p1, 4)
    t_short = run(p1, 1)
    t_long = run(p1, args.output_len_b1 + 1)
    decode = args.output_len_b1 / (t_long - t_short)
    gbs = weights * decode / 1e9
    results["b1_decode_tok_s"] = decode
    print(
        f"transformers batch 1: decode {decode:.1f} tok/s, {gbs:.0f} GB/s = {100 * gbs / hbm:.0f}% of HBM",
        flush=True,
    )
    b = args.hf_batch
    prompts = random_prompts(b, args.input_len, vocab, seed=b)
    t = run(prompts, args.output_len)
    results[f"b{b}_out_tok_s"] = b * args.output_len / t
    print(
        f"transformers batch {b}: {t:.2f} s, {b * args.output_len / t:.0f} output tok/s", flush=True
    )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shape", default="llama-3.1-8b", choices=sorted(SHAPES))
    ap.add_argument("--input-len-b1", type=int, default=128)
    ap.add_argument("--output-len-b1", type=int, default=256)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--hf-batch", type=int, default=64)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.6)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES)
    ap.add_argument(
        "--no-async-scheduling",
        dest="async_scheduling",
        action="store_false",
        help="run steps one after another (async scheduling is the default)",
    )
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument(
        "--sync-debug",
        action="store_true",
        help="warn at each source line that waits for the GPU during the measured runs",
    )
    ap.add_argument("--save", type=Path)
    args = ap.parse_args()

    device = torch.device("cuda")
    print(f"GPU: {torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    hbm = hbm_bandwidth_gbs(device)
    weights = param_bytes(SHAPES[args.shape])
    gemm_tflops = gemm_peak_tflops(device)
    print(
        f"HBM copy bandwidth {hbm:.0f} GB/s; weights {weights / 1e9:.2f} GB "
        f"-> batch-1 roofline {hbm * 1e9 / weights:.0f} tok/s; bf16 GEMM "
        f"(8192x4096 @ 4096x14336) {gemm_tflops:.0f} TFLOP/s",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = dummy_model_dir(args.shape, Path(tmp))
        ember = ember_runs(model_dir, args, hbm, weights, gemm_tflops)
    gc.collect()  # the engine is unreachable now: give its memory back before transformers
    torch.cuda.empty_cache()
    result: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(device),
        "hbm_gbs": hbm,
        "ember": ember,
    }
    if not args.skip_transformers:
        hf = transformers_runs(args, hbm, weights)
        result["transformers"] = hf
        print(f"ratio batch 1 decode: {ember['b1_decode_tok_s'] / hf['b1_decode_tok_s']:.1f}x")
        key = f"b{args.hf_batch}_out_tok_s"
        if key in ember:
            print(f"ratio batch {args.hf_batch}: {ember[key] / hf[key]:.1f}x")
    if args.save:
        args.save.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
