"""GPU checks: the Triton kernels against the PyTorch reference, then their speed, in one run.

    python scripts/gpu_check.py                      # the DEFAULT_SECTIONS below
    python scripts/gpu_check.py --section correctness --section decode

Sections (add new ones to SECTIONS): correctness (write_kv_triton and paged_attention_triton
against attention_ref for many shapes; exits non-zero on any failure), decode (decode attention
µs and achieved KV-read GB/s for Llama-3.1-8B heads, against the HBM copy bandwidth measured in
the same run and torch SDPA on dense copies of the same data), prefill (TFLOP/s, against SDPA),
tune (a sweep of decode tile shapes and split counts, for choosing defaults), tune-fp8 (the
same over an fp8 cache), tune-prefill (the same for prefill tiles), shapes (Gemma 2 9B,
Gemma 3 4B and Qwen3 4B with YaRN at real shapes against transformers; not in the default list:
~8 minutes), gguf
(GGUF dequantization on CUDA against the gguf package's numpy code), rotary-store (the rotary
kernel that also stores k and v, timed against rotary + KV write), gemv (the fused
small-batch GEMVs against their reference, then timed against today's kernels;
scripts/gpu_gemv_check.py), l2 (a projection's weight pulled into L2 beside attention before its
matmul, scripts/gpu_l2_check.py), blas (the small-batch projections under cuBLAS, cuBLASLt and
torch.mv, scripts/gpu_blas_check.py), layout (the same projections with weights stored [K, N]
against [N, K], 1-256 rows, same file), gemm (the decode step's matmuls at 64-512 rows under cuBLAS
and Triton tiles, scripts/gpu_gemm_check.py), overlap (a 256-row decode layer against two
128-row halves whose attention and matmuls run side by side, scripts/gpu_overlap_check.py), peak
(the KV budget's forward pass through a few layers against the whole stack: the same memory
peak, and each one's time; scripts/gpu_peak_check.py), sdpa (long prompts' attention: the prefill
kernel against torch's SDPA backends on K/V gathered from the cache, scripts/gpu_sdpa_check.py),
gemv2 (one-row GEMVs that reduce once, swept against cuBLAS, scripts/gpu_gemv2_check.py),
argmax (greedy sampling's argmax over a step's logits, scripts/gpu_argmax_check.py), hbm (the
HBM's copy and read-only rates, and the batch-1 8B decode roofline at each), fp8-weights (FP8
checkpoints loaded on CUDA, dequantized, against the CPU reference; the load's memory peak
against the bf16 checkpoint's, scripts/gpu_fp8_check.py).

The correctness and gemv sections also run on CPU under Triton's interpreter (with numpy < 2.4, which
Triton 3.6's interpreter needs: e.g. `pip install --target /tmp/np22 numpy==2.2.6` and put that
first on PYTHONPATH, next to a Triton wheel):
    TRITON_INTERPRET=1 python scripts/gpu_check.py --section correctness --device cpu --quick
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ember.layers.metadata import AttentionMetadata
from ember.ops.attention_ref import paged_attention_ref, write_kv
from ember.ops.triton_attention import KernelConfig, kv_splits_for, paged_attention_into
from ember.ops.triton_kv import write_kv_triton
from scripts.gpu_argmax_check import section_argmax
from scripts.gpu_blas_check import section_blas, section_layout
from scripts.gpu_engine_check import section_engine, section_engine_extras
from scripts.gpu_fp8_check import section_fp8_weights
from scripts.gpu_fused_check import section_fused, section_rotary_store
from scripts.gpu_gemm_check import section_gemm
from scripts.gpu_gemv2_check import section_gemv2
from scripts.gpu_gemv_check import section_gemv
from scripts.gpu_l2_check import section_l2
from scripts.gpu_overlap_check import section_overlap
from scripts.gpu_peak_check import section_peak
from scripts.gpu_sdpa_check import section_sdpa
from scripts.gpu_shapes_check import SHAPES, section_shapes

Fn = Callable[[], None]

# (max abs error, ||out - ref|| / ||ref||) allowed per dtype; the reference computes in fp32.
TOLERANCE = {
    torch.bfloat16: (3e-2, 1e-2),
    torch.float16: (4e-3, 2e-3),
    torch.float32: (2e-4, 2e-5),
}
LLAMA_8B = (32, 8, 128)  # query heads, KV heads, head_dim


# ----------------------------------------------------------------------------- batches


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    dtype: torch.dtype
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    seqs: tuple[tuple[int, int], ...]  # (new tokens, tokens in cache after the step) per sequence
    window: int | None = None
    softcap: float | None = None
    splits: int | None = None  # decode-only steps: split-KV pieces; None = automatic
    kv_dtype: torch.dtype | None = None  # the cache's dtype (fp8 caches); None = dtype
    decode_cfg: KernelConfig | None = None  # the single-token launch's config; None = default


@dataclass(slots=True)
class Batch:
    q: torch.Tensor  # [T, Hq, D], a strided view into a fused qkv tensor
    k_new: torch.Tensor  # [T, Hkv, D], likewise
    v_new: torch.Tensor
    k_cache: torch.Tensor  # holds every token of every sequence (the new ones written by write_kv)
    v_cache: torch.Tensor
    md: AttentionMetadata


def make_metadata(
    seqs: list[tuple[int, int]],
    block_tables: torch.Tensor,
    block_size: int,
    device: torch.device,
) -> AttentionMetadata:
    starts = [0]
    for q_len, _ in seqs:
        starts.append(starts[-1] + q_len)
    seq_lens = [seq_len for _, seq_len in seqs]
    slots = []
    for i, (q_len, seq_len) in enumerate(seqs):
        for pos in range(seq_len - q_len, seq_len):
            slots.append(int(block_tables[i, pos // block_size]) * block_size + pos % block_size)
    return AttentionMetadata(
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device=device, dtype=torch.int32),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        max_query_len=max(q for q, _ in seqs),
        max_seq_len=max(seq_lens),
        query_start_loc_cpu=starts,
        seq_lens_cpu=seq_lens,
    )


def random_block_tables(
    seq_lens: list[int], block_size: int, spare: int, gen: torch.Generator
) -> tuple[torch.Tensor, int]:
    """Block tables drawn from a shuffled pool (non-contiguous, out of order); padded with 0."""
    needed = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(needed) + spare
    pool = torch.randperm(num_blocks, generator=gen)
    width = max(needed) + 1
    tables = torch.zeros(len(seq_lens), width, dtype=torch.int32)
    used = 0
    for i, n in enumerate(needed):
        tables[i, :n] = pool[used : used + n]
        used += n
    return tables, num_blocks


def make_batch(case: Case, device: torch.device, gen: torch.Generator) -> Batch:
    hq, hkv, d, bs = case.num_q_heads, case.num_kv_heads, case.head_dim, case.block_size
    seqs = list(case.seqs)
    tables, num_blocks = random_block_tables([s for _, s in seqs], bs, 5, gen)
    md = make_metadata(seqs, tables, bs, device)
    num_tokens = md.query_start_loc_cpu[-1]

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device=device, dtype=case.dtype)

    qkv = randn(num_tokens, (hq + 2 * hkv) * d)
    if case.softcap is not None:
        qkv[:, : hq * d] *= 4  # push scores into the range where the cap bites
    q = qkv[:, : hq * d].view(num_tokens, hq, d)
    k_new = qkv[:, hq * d : (hq + hkv) * d].view(num_tokens, hkv, d)
    v_new = qkv[:, (hq + hkv) * d :].view(num_tokens, hkv, d)
    # Unwritten slots hold NaN: reading one the reference does not read poisons the output.
    kv_dtype = case.kv_dtype or case.dtype
    k_cache = torch.full((num_blocks, bs, hkv, d), float("nan"), dtype=kv_dtype, device=device)
    v_cache = torch.full_like(k_cache, float("nan"))
    old_slots = []
    for i, (q_len, seq_len) in enumerate(seqs):
        for pos in range(seq_len - q_len):
            old_slots.append(int(tables[i, pos // bs]) * bs + pos % bs)
    if old_slots:
        slots = torch.tensor(old_slots, dtype=torch.int64, device=device)
        write_kv(
            k_cache, v_cache, randn(len(old_slots), hkv, d), randn(len(old_slots), hkv, d), slots
        )
    return Batch(q, k_new, v_new, k_cache, v_cache, md)


# ----------------------------------------------------------------------------- correctness


ONE_LOOP = KernelConfig(16, 128, 4, 2, one_loop=True)
ONE_LOOP32 = KernelConfig(16, 32, 4, 2, one_loop=True)  # fp32 caches: small tiles
V_EARLY = KernelConfig(16, 128, 4, 3, one_loop=True, widen_v_early=True)  # fp8 caches


def correctness_cases(quick: bool) -> list[Case]:
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    e4m3, e5m2 = torch.float8_e4m3fn, torch.float8_e5m2
    prefill = ((37, 37), (128, 128), (300, 300))
    decode = ((1, 1), (1, 17), (0, 9), (1, 500), (1, 1000), (1, 80), (1, 333))
    mixed = ((1, 100), (57, 200), (1, 33), (128, 128), (0, 5), (200, 1000), (3, 3), (1, 2049))
    long_decode = ((1, 3000),)
    cases = [
        Case("prefill llama", bf16, 32, 8, 128, 16, prefill),
        Case("decode llama", bf16, 32, 8, 128, 16, decode, splits=1),
        Case("decode llama split 8", bf16, 32, 8, 128, 16, decode, splits=8),
        Case("decode 1 seq split auto", bf16, 32, 8, 128, 16, long_decode),
        Case("decode short split 16", bf16, 32, 8, 128, 16, ((1, 5), (1, 70)), splits=16),
        Case("mixed llama", bf16, 32, 8, 128, 16, mixed),
        Case("mixed gqa1 d64", bf16, 8, 8, 64, 16, mixed),
        Case("mixed gqa8 d128", bf16, 32, 4, 128, 16, mixed),
        Case("mixed gqa7 d64 (qwen)", bf16, 14, 2, 64, 16, mixed),
        Case("mixed d256 window 40", bf16, 8, 4, 256, 16, mixed, window=40),
        Case("mixed window 64", bf16, 32, 8, 128, 16, mixed, window=64),
        Case("decode window 100 split 8", bf16, 32, 8, 128, 16, decode, window=100, splits=8),
        Case("mixed softcap 5", bf16, 32, 8, 128, 16, mixed, softcap=5.0),
        Case("gemma2 d256 win+cap", bf16, 16, 8, 256, 16, mixed, window=64, softcap=5.0),
        Case("decode d256 split 4", bf16, 16, 8, 256, 16, decode, splits=4),
        Case("mixed block 8", bf16, 32, 8, 128, 8, mixed),
        Case("mixed block 32", bf16, 32, 8, 128, 32, mixed),
        Case("prefill d16 tiny", bf16, 4, 2, 16, 16, prefill),
        Case("mixed fp16", fp16, 32, 8, 128, 16, mixed),
        Case("decode fp16 d64 split 8", fp16, 16, 2, 64, 16, decode, splits=8),
        Case("prefill fp16 gqa1", fp16, 8, 8, 128, 16, prefill),
        Case("mixed fp32 d64", fp32, 8, 8, 64, 16, mixed),
        Case("mixed fp32 d16 window+cap", fp32, 4, 2, 16, 16, mixed, window=20, softcap=5.0),
        Case("decode fp32 d128 split 4", fp32, 32, 8, 128, 16, decode, splits=4),
        # fp8 caches (--kv-cache-dtype): the reference reads the same fp8 cache, so the bf16
        # tolerance applies; write_kv_triton must store the same bytes (saturated, RNE).
        Case("mixed llama fp8", bf16, 32, 8, 128, 16, mixed, kv_dtype=e4m3),
        Case("decode llama fp8 split 8", bf16, 32, 8, 128, 16, decode, splits=8, kv_dtype=e4m3),
        Case("gemma2 win+cap fp8", bf16, 16, 8, 256, 16, mixed, 64, 5.0, kv_dtype=e4m3),
        Case("mixed gqa7 d64 fp8_e5m2", bf16, 14, 2, 64, 16, mixed, kv_dtype=e5m2),
        # fp8's decode default (V widened in registers) in the two loops a window takes
        Case("mixed window 64 fp8", bf16, 32, 8, 128, 16, mixed, 64, kv_dtype=e4m3),
        Case("decode window 100 fp8 split 8", bf16, 32, 8, 128, 16, decode, 100, None, 8, e4m3),
        # KernelConfig.one_loop: decode's one key loop masked at the end only (keys past it
        # read from block 0, NaN-filled here, and dropped); with a window, the usual loops.
        Case("decode llama 1loop", bf16, 32, 8, 128, 16, decode, splits=1, decode_cfg=ONE_LOOP),
        Case("decode 1loop split 8", bf16, 32, 8, 128, 16, decode, splits=8, decode_cfg=ONE_LOOP),
        Case("mixed gqa7 d64 1loop", bf16, 14, 2, 64, 16, mixed, decode_cfg=ONE_LOOP),
        Case("decode window 1loop", bf16, 32, 8, 128, 16, decode, 100, decode_cfg=ONE_LOOP),
        Case("decode fp32 1loop", fp32, 32, 8, 128, 16, decode, splits=4, decode_cfg=ONE_LOOP32),
        Case("decode fp8 1loop", bf16, 32, 8, 128, 16, decode, None, None, 8, e4m3, ONE_LOOP),
        Case("decode fp8 v early", bf16, 32, 8, 128, 16, decode, None, None, 1, e4m3, V_EARLY),
        Case(
            "decode fp8 v early split", bf16, 32, 8, 128, 16, decode, None, None, 8, e4m3, V_EARLY
        ),
    ]
    if quick:
        # The CPU interpreter: short sequences only, and float16 for bfloat16, which numpy
        # lacks (Triton 3.6's interpreter gets bfloat16 caches wrong: errors ~1e9).
        short = ((1, 1), (5, 40), (1, 33), (0, 3), (20, 20))
        cases = [
            Case(
                c.name,
                fp16 if c.dtype == bf16 else c.dtype,
                c.num_q_heads,
                c.num_kv_heads,
                c.head_dim,
                c.block_size,
                short,
                c.window and 8,
                c.softcap,
                c.splits,
                decode_cfg=c.decode_cfg,
            )
            for c in cases
            if c.kv_dtype is None  # the interpreter rounds some fp8 casts a power of two off
        ]
        cases.append(
            Case(
                "quick decode split",
                fp16,
                8,
                2,
                64,
                16,
                ((1, 1), (1, 40), (0, 3), (1, 70)),
                splits=4,
                window=None,
            )
        )
    return cases


def check_write_kv(batch: Batch) -> str | None:
    """write_kv_triton must store bit-for-bit what write_kv stores; slot -1 must be skipped."""
    k_ref, v_ref = batch.k_cache.clone(), batch.v_cache.clone()
    write_kv(k_ref, v_ref, batch.k_new, batch.v_new, batch.md.slot_mapping)
    # Two padding tokens (slot -1) ride along and must leave the cache alone.
    pad_k = torch.randn_like(batch.k_new[:2])
    k = torch.cat([batch.k_new, pad_k])
    v = torch.cat([batch.v_new, pad_k])
    pad = torch.full((2,), -1, dtype=torch.int64, device=k.device)
    write_kv_triton(batch.k_cache, batch.v_cache, k, v, torch.cat([batch.md.slot_mapping, pad]))
    for got, want in ((batch.k_cache, k_ref), (batch.v_cache, v_ref)):
        if not torch.equal(got.view(torch.uint8), want.view(torch.uint8)):
            return "cache differs from write_kv"
    if batch.k_cache.element_size() == 1:  # fp8: values past its range saturate in both
        big = batch.k_new * 1000
        caches = [batch.k_cache.clone() for _ in range(4)]
        write_kv(caches[0], caches[1], big, -big, batch.md.slot_mapping)
        write_kv_triton(caches[2], caches[3], big, -big, batch.md.slot_mapping)
        if not all(torch.equal(a.view(torch.uint8), b.view(torch.uint8))
                   for a, b in ((caches[0], caches[2]), (caches[1], caches[3]))):  # fmt: skip
            return "saturated fp8 stores differ from write_kv"
    return None


def run_case(case: Case, device: torch.device, seed: int) -> tuple[bool, str]:
    gen = torch.Generator().manual_seed(seed)
    batch = make_batch(case, device, gen)
    write_error = check_write_kv(batch)
    scale = case.head_dim**-0.5
    ref = paged_attention_ref(
        batch.q, batch.k_cache, batch.v_cache, batch.md, scale, case.window, case.softcap
    )
    out = torch.full(batch.q.shape, float("nan"), dtype=case.dtype, device=device)
    paged_attention_into(
        out,
        batch.q,
        batch.k_cache,
        batch.v_cache,
        batch.md,
        scale,
        case.window,
        case.softcap,
        num_kv_splits=case.splits,
        decode_config=case.decode_cfg,
    )
    diff = (out.float() - ref.float()).abs()
    max_abs = diff.max().item()
    rel = (diff.norm() / ref.float().norm().clamp_min(1e-30)).item()
    atol, rtol = TOLERANCE[case.dtype]
    ok = write_error is None and not math.isnan(max_abs) and max_abs <= atol and rel <= rtol
    dtype = str(case.dtype).removeprefix("torch.")
    if case.kv_dtype is not None:
        dtype = str(case.kv_dtype).removeprefix("torch.float8_")
    shape = f"{case.num_q_heads}/{case.num_kv_heads}x{case.head_dim} bs{case.block_size}"
    note = write_error or ""
    line = f"{case.name:<28} {dtype:<9} {shape:<16} {max_abs:>10.2e} {rel:>10.2e}  "
    return ok, line + ("PASS" if ok else "FAIL") + (f"  {note}" if note else "")


def section_correctness(args: argparse.Namespace) -> bool:
    device = torch.device(args.device)
    print(f"{'case':<28} {'dtype':<9} {'heads x D':<16} {'max abs':>10} {'rel l2':>10}")
    all_ok = True
    for i, case in enumerate(correctness_cases(args.quick)):
        try:
            ok, line = run_case(case, device, seed=1000 + i)
        except Exception as e:  # report and go on: one broken case should not hide the rest
            ok, line = False, f"{case.name:<28} ERROR {type(e).__name__}: {e}"
        all_ok &= ok
        print(line, flush=True)
    print(f"correctness: {'all PASS' if all_ok else 'FAILURES'}")
    return all_ok


# ----------------------------------------------------------------------------- timing


def time_us(calls: Sequence[Callable[[], object]], reps: int = 15, graph: bool = True) -> float:
    """Median µs per call. The calls (one per rotating input set) are captured once into a CUDA
    graph and replayed, so launch gaps are those of a graph-captured engine step."""
    for fn in calls:
        fn()
    torch.cuda.synchronize()
    run: Fn

    def eager() -> None:
        for fn in calls:
            fn()

    run = eager
    if graph:
        try:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                eager()
            run = g.replay
        except Exception as e:  # worth knowing: the engine captures decode steps in graphs
            print(f"  CUDA graph capture failed, timing eagerly: {type(e).__name__}: {e}")
            torch.cuda.synchronize()

    run()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / len(calls))
    return statistics.median(times)


def hbm_copy_gbps() -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)

    def copy() -> None:
        b.copy_(a)

    us = time_us([copy], reps=10, graph=False)
    return 2 * n / (us * 1e3)


def hbm_read_gbps() -> float:
    """Read-only bandwidth: the faster of torch's sum and max over 4 GiB of bf16 (what a
    batch-1 decode step mostly does: read weights once)."""
    a = torch.empty(1 << 31, dtype=torch.bfloat16, device="cuda").normal_()

    def total() -> None:
        torch.sum(a, dtype=torch.float32)

    def peak() -> None:
        a.amax()

    us = min(time_us([total], reps=10, graph=False), time_us([peak], reps=10, graph=False))
    return a.numel() * 2 / (us * 1e3)


def section_hbm(args: argparse.Namespace) -> bool:
    """The HBM's copy and read rates, and the batch-1 decode roofline of the Llama-3.1-8B shape
    (16.06 GB of weights a token) at each."""
    copy, read = hbm_copy_gbps(), hbm_read_gbps()
    for label, gbps in (("copy (read + write)", copy), ("read only", read)):
        print(f"HBM {label:20} {gbps:7.0f} GB/s -> batch-1 8B roofline {gbps / 16.06:6.1f} tok/s")
    return True


@dataclass(slots=True)
class DecodeSetup:
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    qs: list[torch.Tensor]
    mds: list[AttentionMetadata]


def decode_setup(
    batch: int, ctx: int, rotate_bytes: int = 1 << 28, device: str = "cuda"
) -> DecodeSetup:
    """Llama-8B decode inputs; enough disjoint sets of blocks that rotating through them reads
    more than L2 holds, so small configs time HBM, not the cache."""
    hq, hkv, d = LLAMA_8B
    bs = 16
    kv_bytes = batch * ctx * hkv * d * 2 * 2
    sets = min(64, max(1, -(-rotate_bytes // kv_bytes)))
    blocks_per_seq = -(-ctx // bs)
    num_blocks = sets * batch * blocks_per_seq
    pool = torch.randperm(num_blocks, device=device, dtype=torch.int64).to(torch.int32)
    k_cache = torch.randn(num_blocks, bs, hkv, d, device=device, dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    qs, mds = [], []
    for s in range(sets):
        tables = pool[s * batch * blocks_per_seq : (s + 1) * batch * blocks_per_seq]
        tables = tables.view(batch, blocks_per_seq)
        md = AttentionMetadata(
            query_start_loc=torch.arange(batch + 1, dtype=torch.int32, device=device),
            seq_lens=torch.full((batch,), ctx, dtype=torch.int32, device=device),
            block_tables=tables.contiguous(),
            slot_mapping=torch.zeros(batch, dtype=torch.int64, device=device),
            max_query_len=1,
            max_seq_len=ctx,
            query_start_loc_cpu=list(range(batch + 1)),
            seq_lens_cpu=[ctx] * batch,
        )
        qs.append(torch.randn(batch, hq, d, device=device, dtype=torch.bfloat16))
        mds.append(md)
    return DecodeSetup(k_cache, v_cache, qs, mds)


def dense_kv(setup: DecodeSetup, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Set i's keys and values as dense [B, Hkv, ctx, D] tensors, for SDPA."""
    md = setup.mds[i]
    ctx = md.max_seq_len
    k = setup.k_cache[md.block_tables.long()].flatten(1, 2)[:, :ctx].transpose(1, 2)
    v = setup.v_cache[md.block_tables.long()].flatten(1, 2)[:, :ctx].transpose(1, 2)
    return k.contiguous(), v.contiguous()


def decode_calls(
    setup: DecodeSetup, out: torch.Tensor, splits: int | None, cfg: KernelConfig | None
) -> list[Fn]:
    scale = LLAMA_8B[2] ** -0.5

    def call(i: int) -> Fn:
        return lambda: paged_attention_into(
            out,
            setup.qs[i],
            setup.k_cache,
            setup.v_cache,
            setup.mds[i],
            scale,
            num_kv_splits=splits,
            decode_config=cfg,
        )

    return [call(i) for i in range(len(setup.qs))]


def sdpa_decode_us(setup: DecodeSetup) -> tuple[float, torch.Tensor] | None:
    """SDPA (GQA) on dense copies of the same sets: µs per call and set 0's output."""
    sets = len(setup.qs)
    dense = [dense_kv(setup, i) for i in range(sets)]
    qd = [q.unsqueeze(2) for q in setup.qs[:sets]]  # [B, Hq, 1, D]
    outs = [torch.empty_like(q) for q in qd]
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def call(i: int) -> Fn:
        def fn() -> None:
            outs[i].copy_(sdpa(qd[i], dense[i][0], dense[i][1], enable_gqa=True))

        return fn

    try:
        us = time_us([call(i) for i in range(sets)])
    except Exception as e:
        print(f"  sdpa unavailable: {type(e).__name__}: {e}")
        return None
    return us, outs[0].squeeze(2)


def section_decode(args: argparse.Namespace) -> bool:
    hbm = hbm_copy_gbps()
    print(f"HBM device-to-device copy: {hbm:,.0f} GB/s (read + write)")
    hq, hkv, d = LLAMA_8B
    rows = []
    for batch in (1, 16, 64, 256):
        for ctx in (512, 2048, 8192):
            setup = decode_setup(batch, ctx)
            out = torch.empty(batch, hq, d, device="cuda", dtype=torch.bfloat16)
            us = time_us(decode_calls(setup, out, None, None))
            kv_gb = batch * ctx * hkv * d * 2 * 2 / 1e9
            splits = kv_splits_for(batch, hkv, ctx, out.device)
            sdpa = sdpa_decode_us(setup)
            paged_attention_into(
                out, setup.qs[0], setup.k_cache, setup.v_cache, setup.mds[0], d**-0.5
            )
            err = (out.float() - sdpa[1].float()).abs().max().item() if sdpa else float("nan")
            sdpa_us = sdpa[0] if sdpa else float("nan")
            gbps = kv_gb * 1e6 / us
            rows.append(
                f"{batch:>5} {ctx:>6} {splits:>6} {us:>9.1f} {gbps:>8,.0f} {gbps / hbm:>6.0%}"
                f" {sdpa_us:>9.1f} {kv_gb * 1e6 / sdpa_us:>8,.0f} {err:>9.1e}"
            )
            print(rows[-1], flush=True)
            del setup, out, sdpa
            torch.cuda.empty_cache()
    print(
        f"\ndecode attention, Llama-3.1-8B heads ({hq}q/{hkv}kv x {d}), bf16, block 16, "
        f"one layer; HBM copy {hbm:,.0f} GB/s"
    )
    print(
        f"{'batch':>5} {'ctx':>6} {'splits':>6} {'us':>9} {'GB/s':>8} {'%HBM':>6}"
        f" {'sdpa us':>9} {'sdpa GB/s':>8} {'max diff':>9}"
    )
    print("\n".join(rows))
    return True


def section_decode_fp8(args: argparse.Namespace) -> bool:
    """Decode attention over a bf16 cache against the same cache in fp8 (--kv-cache-dtype
    fp8), one layer, Llama-3.1-8B heads: whether reading half the bytes makes it faster."""
    hq, _, d = LLAMA_8B
    print(f"{'batch':>5} {'ctx':>6} {'bf16 us':>9} {'fp8 us':>9} {'fp8 speed-up':>13}")
    for batch, ctx in ((1, 512), (1, 8192), (64, 640), (256, 640), (256, 2048), (16, 8192)):
        setup = decode_setup(batch, ctx)
        out = torch.empty(batch, hq, d, device="cuda", dtype=torch.bfloat16)
        bf16_us = time_us(decode_calls(setup, out, None, None))
        setup.k_cache = setup.k_cache.to(torch.float8_e4m3fn)
        setup.v_cache = setup.v_cache.to(torch.float8_e4m3fn)
        fp8_us = time_us(decode_calls(setup, out, None, None))
        print(f"{batch:>5} {ctx:>6} {bf16_us:>9.1f} {fp8_us:>9.1f} {bf16_us / fp8_us:>12.2f}x")
        del setup, out
        torch.cuda.empty_cache()
    return True


def prefill_setup(batch: int, length: int) -> tuple[Batch, int]:
    hq, hkv, d = LLAMA_8B
    case = Case("prefill", torch.bfloat16, hq, hkv, d, 16, tuple([(length, length)] * batch))
    b = make_batch(case, torch.device("cuda"), torch.Generator().manual_seed(7))
    write_kv_triton(b.k_cache, b.v_cache, b.k_new, b.v_new, b.md.slot_mapping)
    flops = 4 * hq * d * batch * length * (length + 1) // 2  # causal: QK^T and PV
    return b, flops


def prefill_rows(batch: int, length: int, configs: list[KernelConfig | None]) -> list[str]:
    hq, hkv, d = LLAMA_8B
    b, flops = prefill_setup(batch, length)
    out = torch.empty_like(b.q)
    q_dense = b.q.view(batch, length, hq, d).transpose(1, 2).contiguous()
    k_dense = b.k_new.view(batch, length, hkv, d).transpose(1, 2).contiguous()
    v_dense = b.v_new.view(batch, length, hkv, d).transpose(1, 2).contiguous()

    def sdpa() -> None:
        torch.nn.functional.scaled_dot_product_attention(
            q_dense, k_dense, v_dense, is_causal=True, enable_gqa=True
        )

    try:
        sdpa_us = time_us([sdpa])
    except Exception as e:
        print(f"  sdpa unavailable: {type(e).__name__}: {e}")
        sdpa_us = float("nan")
    rows = []
    for cfg in configs:

        def ours(cfg: KernelConfig | None = cfg) -> None:
            paged_attention_into(out, b.q, b.k_cache, b.v_cache, b.md, d**-0.5, prefill_config=cfg)

        us = time_us([ours])
        rows.append(
            f"{batch:>3}x{length:<5} {cfg_name(cfg):<18} {us:>9.1f} {flops / us / 1e6:>8.1f}"
            f" {sdpa_us:>9.1f} {flops / sdpa_us / 1e6:>8.1f}"
        )
        print(rows[-1], flush=True)
    return rows


def section_prefill(
    args: argparse.Namespace, configs: list[KernelConfig | None] | None = None
) -> bool:
    rows = []
    for batch, length in ((1, 2048), (8, 512), (1, 8192), (4, 4096)):
        rows += prefill_rows(batch, length, configs or [None])
        torch.cuda.empty_cache()
    print(
        "\nprefill attention (causal), Llama-3.1-8B heads, bf16, from the paged cache; "
        "SDPA on dense tensors"
    )
    print(f"{'tokens':<9} {'config':<18} {'us':>9} {'TFLOP/s':>8} {'sdpa us':>9} {'TFLOP/s':>8}")
    print("\n".join(rows))
    return True


def cfg_name(cfg: KernelConfig | None) -> str:
    if cfg is None:
        return "default"
    name = f"m{cfg.block_m} n{cfg.block_n} w{cfg.num_warps} s{cfg.num_stages}"
    return name + (" 1loop" if cfg.one_loop else "") + (" vearly" if cfg.widen_v_early else "")


def section_tune(args: argparse.Namespace) -> bool:
    return decode_sweep(
        [
            None,
            KernelConfig(16, 64, 4, 3),
            KernelConfig(16, 128, 4, 2),
            KernelConfig(16, 128, 4, 3),
            KernelConfig(16, 32, 4, 2),
            KernelConfig(16, 64, 4, 2),
            KernelConfig(16, 64, 2, 3),
            KernelConfig(16, 128, 8, 2),
            KernelConfig(16, 128, 4, 4),
            KernelConfig(16, 256, 8, 2),
            # Two shared buffers per K/V tile (the pipeliner gives them only from 5 stages: the
            # page-index load comes first) at 3 CTAs an SM (168 registers); scripts/kernel_ir.py.
            KernelConfig(16, 64, 4, 5),
            # One key loop (KernelConfig.one_loop): 144-152 registers at 128 keys (3 programs
            # an SM), 104-128 at 64 keys (4), against 216.
            KernelConfig(16, 128, 4, 2, one_loop=True),
            KernelConfig(16, 128, 4, 3, one_loop=True),
            KernelConfig(16, 64, 4, 2, one_loop=True),
            KernelConfig(16, 64, 4, 3, one_loop=True),
            KernelConfig(16, 64, 4, 5, one_loop=True),
        ],
        (
            (256, 640, (1, 2)),
            (128, 640, (1, 2)),
            (1, 512, (1, 4, 8, 16)),
            (1, 8192, (16, 32, 64)),
            (16, 8192, (1, 4, 8)),
            (64, 8192, (1, 2)),
            (256, 2048, (1,)),
        ),
        torch.bfloat16,
    )


def section_tune_fp8(args: argparse.Namespace) -> bool:
    """The decode sweep over an fp8 (e4m3) cache: a tile holds half the bytes of a bf16 one,
    so fewer bytes are in flight per program with the bf16 defaults."""
    return decode_sweep(
        [
            None,
            KernelConfig(16, 128, 4, 3),
            KernelConfig(16, 128, 4, 4),
            KernelConfig(16, 128, 8, 3),
            KernelConfig(16, 256, 4, 2),
            KernelConfig(16, 256, 4, 3),
            KernelConfig(16, 256, 8, 2),
            KernelConfig(16, 256, 8, 3),
            KernelConfig(16, 512, 8, 2),
            KernelConfig(16, 64, 4, 4),
            # Two shared buffers per K/V tile (from 5 stages), still 2 CTAs an SM: twice the
            # bytes in flight of the 3-stage default (scripts/kernel_ir.py).
            KernelConfig(16, 128, 4, 5),
            KernelConfig(16, 128, 4, 6),
            # One key loop: 3 programs an SM at 64 keys (148-154 registers), 2 at 128.
            KernelConfig(16, 64, 4, 3, one_loop=True),
            KernelConfig(16, 64, 4, 5, one_loop=True),
            KernelConfig(16, 128, 4, 3, one_loop=True),
            KernelConfig(16, 128, 4, 5, one_loop=True),
            # Two warps (bf16's choice without a split; not yet timed over fp8): 4 programs an
            # SM, two shared buffers a tile from 5 stages, 212-218 registers (kernel_ir.py).
            KernelConfig(16, 64, 2, 5, one_loop=True),
            KernelConfig(16, 32, 2, 5, one_loop=True),
            # V widened in registers (KernelConfig.widen_v_early; the default's 5 stages made
            # fp8's default in the sixteenth session): 128 registers at 128 keys (3 programs an
            # SM at 3-4 stages, shared memory's limit), 112 at 64 keys (4 an SM); 1,022 / 664
            # instructions a warp a tile against 1,206 without.
            KernelConfig(16, 128, 4, 3, one_loop=True, widen_v_early=True),
            KernelConfig(16, 128, 4, 4, one_loop=True, widen_v_early=True),
            KernelConfig(16, 128, 4, 5, one_loop=True, widen_v_early=True),
            KernelConfig(16, 64, 4, 3, one_loop=True, widen_v_early=True),
            KernelConfig(16, 64, 4, 5, one_loop=True, widen_v_early=True),
            KernelConfig(16, 128, 8, 3, one_loop=True, widen_v_early=True),
            KernelConfig(16, 128, 8, 2, one_loop=True, widen_v_early=True),  # 80 regs, 3 an SM
        ],
        (
            (256, 640, (1, 2)),
            (64, 640, (1, 2)),
            (1, 8192, (16, 32)),
            (16, 8192, (1, 4)),
            (256, 2048, (1,)),
        ),
        torch.float8_e4m3fn,
    )


def head_major(cache: torch.Tensor) -> torch.Tensor:
    """A [blocks, slots, heads, dim] cache's values stored head-major ([blocks, heads, slots,
    dim] in memory), viewed in the kernel's [blocks, slots, heads, dim] order."""
    return cache.transpose(1, 2).contiguous().transpose(1, 2)


def cache_setup(
    batch: int, ctx: int, kv_dtype: torch.dtype, heads_major: bool = False
) -> DecodeSetup:
    """decode_setup with its caches in kv_dtype, stored head-major if asked."""
    setup = decode_setup(batch, ctx)
    k, v = setup.k_cache.to(kv_dtype), setup.v_cache.to(kv_dtype)
    setup.k_cache, setup.v_cache = (head_major(k), head_major(v)) if heads_major else (k, v)
    return setup


def decode_sweep(
    configs: list[KernelConfig | None],
    shapes: tuple[tuple[int, int, tuple[int, ...]], ...],
    kv_dtype: torch.dtype,
    heads_major: bool = False,
) -> bool:
    """Decode attention µs and KV-read GB/s for each (batch, ctx) x config x split count."""
    hq, hkv, d = LLAMA_8B
    elem = torch.empty((), dtype=kv_dtype).element_size()
    rows = []
    for batch, ctx, split_choices in shapes:
        setup = cache_setup(batch, ctx, kv_dtype, heads_major)
        out = torch.empty(batch, hq, d, device="cuda", dtype=torch.bfloat16)
        kv_gb = batch * ctx * hkv * d * 2 * elem / 1e9
        for cfg in configs:
            for splits in split_choices:
                us = time_us(decode_calls(setup, out, splits, cfg))
                rows.append(
                    f"{batch:>5} {ctx:>6} {cfg_name(cfg):<21} {splits:>6} {us:>9.1f} "
                    f"{kv_gb * 1e6 / us:>8,.0f}"
                )
                print(rows[-1], flush=True)
        del setup, out
        torch.cuda.empty_cache()
    print(f"\ndecode tuning, {kv_dtype} cache" + (", stored head-major" if heads_major else ""))
    print(f"{'batch':>5} {'ctx':>6} {'config':<21} {'splits':>6} {'us':>9} {'GB/s':>8}")
    print("\n".join(rows))
    return True


def section_tune_splits(args: argparse.Namespace) -> bool:
    """Tiles and pieces (a sequence's keys cut into) at the batches an autoscaled replica runs:
    2-64 sequences of ~560 keys (a 512-token prompt and its first tokens) and a few longer,
    both caches. Small batches are bound by one program's chain of tiles, not by HBM."""
    shapes = (
        (2, 560, (1, 2, 3, 5)),
        (4, 560, (1, 2, 3, 5)),
        (8, 560, (1, 2, 3)),
        (16, 560, (1, 2)),
        (32, 560, (1, 2)),
        (64, 560, (1,)),
        (16, 2048, (1, 2, 4)),
        (4, 4096, (1, 4, 8, 16)),
    )
    configs = [
        None,
        KernelConfig(16, 64, 2, 5, one_loop=True),
        KernelConfig(16, 64, 4, 5, one_loop=True),
        KernelConfig(16, 128, 4, 5, one_loop=True),
        KernelConfig(16, 64, 2, 3, one_loop=True),
        KernelConfig(16, 32, 2, 5, one_loop=True),
    ]
    for kv_dtype in (torch.bfloat16, torch.float8_e4m3fn):
        decode_sweep(configs, shapes, kv_dtype)
    return True


def _policy_before(batch: int, kv_dtype: torch.dtype) -> tuple[int, KernelConfig]:
    """The decode launch's pieces and tiles before the fifteenth session (for the A/B)."""
    programs, sms = batch * LLAMA_8B[1], torch.cuda.get_device_properties(0).multi_processor_count
    splits = 1 if programs >= sms else min(math.ceil(4 * sms / programs), GRAPH_MAX_LEN // 128, 32)
    if kv_dtype.itemsize == 1:
        return splits, KernelConfig(16, 128, 4, 5, one_loop=True)
    return splits, KernelConfig(16, 128, 4, 2) if splits > 1 else KernelConfig(16, 64, 2, 3)


GRAPH_MAX_LEN = 131072  # Llama-3.1's max length: the split count a captured graph freezes


def section_splits_policy(args: argparse.Namespace) -> bool:
    """Decode attention as the engine launches it (pieces from kv_splits_for at the model's max
    length, as a captured graph has them; tiles from _decode_config) against the policy before,
    over batches 1-256 and 256-8192 keys."""
    hq, hkv, d = LLAMA_8B
    shapes = ((1, 256), (1, 560), (1, 2048), (1, 8192), (2, 560), (4, 560), (8, 560),
              (16, 560), (32, 560), (64, 560), (128, 560), (256, 640), (8, 2048), (16, 2048),
              (4, 4096), (2, 8192))  # fmt: skip
    rows = []
    for kv_dtype in (torch.bfloat16, torch.float8_e4m3fn):
        elem = kv_dtype.itemsize
        for batch, ctx in shapes:
            setup = cache_setup(batch, ctx, kv_dtype)
            out = torch.empty(batch, hq, d, device="cuda", dtype=torch.bfloat16)
            splits = kv_splits_for(batch, hkv, GRAPH_MAX_LEN, out.device)
            now = time_us(decode_calls(setup, out, splits, None))
            old_splits, old_cfg = _policy_before(batch, kv_dtype)
            before = time_us(decode_calls(setup, out, old_splits, old_cfg))
            gb = batch * ctx * hkv * d * 2 * elem / 1e9
            rows.append(
                f"{str(kv_dtype)[6:]:<14} {batch:>5} {ctx:>6} {old_splits:>3} {before:>8.1f} "
                f"{splits:>3} {now:>8.1f} {gb * 1e6 / now:>7,.0f} {before / now:>6.2f}x"
            )
            print(rows[-1], flush=True)
            del setup, out
            torch.cuda.empty_cache()
    print("\ndecode attention, Llama-3.1-8B heads: the policy before and now (µs a layer)")
    print(f"{'cache':<14} {'batch':>5} {'ctx':>6} {'pcs':>3} {'before':>8} {'pcs':>3} {'now':>8} "
          f"{'GB/s':>7} {'speed':>7}")  # fmt: skip
    print("\n".join(rows))
    return True


def section_kv_layout(args: argparse.Namespace) -> bool:
    """The cache stored slot-major (today: a key's heads side by side, so one head's key is a
    lone 128-256 B run) against head-major (a head's 16 keys of a block in one 2-4 KiB run):
    decode attention at the default tiles, both layouts giving the same output."""
    hq, _, d = LLAMA_8B
    ok = True
    for kv_dtype in (torch.bfloat16, torch.float8_e4m3fn):
        setup = cache_setup(64, 640, kv_dtype)
        k, v = setup.k_cache, setup.v_cache
        outs = []
        for kc, vc in ((k, v), (head_major(k), head_major(v))):
            out = torch.empty(64, hq, d, device="cuda", dtype=torch.bfloat16)
            paged_attention_into(out, setup.qs[0], kc, vc, setup.mds[0], d**-0.5)
            outs.append(out)
        same = torch.equal(outs[0], outs[1])
        verdict = "PASS" if same else "FAIL"
        print(f"{kv_dtype!s:<22} head-major output equal to slot-major: {verdict}")
        ok &= same
        del setup, k, v, outs
        torch.cuda.empty_cache()
    shapes = ((256, 640, (1,)), (64, 2048, (1,)), (16, 8192, (1, 4)), (1, 8192, (16, 32)))
    configs: list[KernelConfig | None] = [None]
    for kv_dtype in (torch.bfloat16, torch.float8_e4m3fn):
        for heads_major in (False, True):
            decode_sweep(configs, shapes, kv_dtype, heads_major)
    return ok


def section_tune_prefill(args: argparse.Namespace) -> bool:
    print("prefill tuning")
    return section_prefill(
        args,
        [
            None,
            KernelConfig(128, 32, 4, 3),
            KernelConfig(128, 64, 8, 3),
            KernelConfig(128, 128, 8, 2),
            KernelConfig(128, 32, 8, 3),
            KernelConfig(128, 64, 4, 2),
            KernelConfig(64, 64, 4, 3),
        ],
    )
    return True


def section_gguf(args: argparse.Namespace) -> bool:
    from scripts.gpu_gguf_check import section_gguf as run  # needs the gguf package

    return run(args)


SECTIONS: dict[str, Callable[[argparse.Namespace], bool]] = {
    "correctness": section_correctness,
    "decode": section_decode,
    "decode-fp8": section_decode_fp8,
    "prefill": section_prefill,
    "tune": section_tune,
    "tune-fp8": section_tune_fp8,
    "tune-splits": section_tune_splits,
    "splits-policy": section_splits_policy,
    "tune-prefill": section_tune_prefill,
    "engine": section_engine,
    "engine-extras": section_engine_extras,
    "fused": section_fused,
    "rotary-store": section_rotary_store,
    "shapes": section_shapes,
    "gguf": section_gguf,
    "fp8-weights": section_fp8_weights,
    "gemv": section_gemv,
    "l2": section_l2,
    "blas": section_blas,
    "layout": section_layout,
    "gemm": section_gemm,
    "overlap": section_overlap,
    "peak": section_peak,
    "sdpa": section_sdpa,
    "gemv2": section_gemv2,
    "argmax": section_argmax,
    "hbm": section_hbm,
    "kv-layout": section_kv_layout,
}
DEFAULT_SECTIONS = ["correctness", "fused", "gemv", "decode", "prefill", "engine", "peak"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--section",
        action="append",
        choices=sorted(SECTIONS),
        help="sections to run, in order (repeatable); default: " + ", ".join(DEFAULT_SECTIONS),
    )
    parser.add_argument(
        "--device",
        default="cuda",
        help="correctness only: cpu runs the kernels under TRITON_INTERPRET=1",
    )
    parser.add_argument("--quick", action="store_true", help="correctness: short sequences only")
    parser.add_argument(
        "--shapes", action="append", choices=sorted(SHAPES), help="shapes: models to check"
    )
    parser.add_argument("--tmp", help="shapes: folder for the saved random models")
    args = parser.parse_args()
    if args.device == "cuda":
        import triton

        print(
            f"{torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}",
            flush=True,
        )
    failed = []
    for name in args.section or DEFAULT_SECTIONS:
        print(f"\n=== {name} ===", flush=True)
        if not SECTIONS[name](args):
            failed.append(name)
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        return 1
    print("\nall sections passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
