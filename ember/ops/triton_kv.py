"""Triton KV cache write: the CUDA twin of `attention_ref.write_kv`, one launch per layer and step.

One program per new token copies its k and v rows (all KV heads) into the token's cache slot,
casting to the cache dtype (fp8 caches: saturated at the format's largest value, no scale). A
slot of -1 marks a padding token (a CUDA-graph batch padded to its captured size) and is
skipped, so padded steps never touch the cache.

On a CPU-only install (no Triton) importing this module still works: `available()` says False and
the kernel below stays a plain function that is never launched.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch

from ember.envflags import env_flag
from ember.ops.attention_ref import FP8_DTYPES

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only install: nothing here may be launched, and `available()` says so
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
try:  # programmatic dependent launch (Triton 3.3+): see pdl_launch
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:
    gdc_launch_dependents = gdc_wait = None


def _identity(fn: Any) -> Any:
    return fn


# `triton.jit` where Triton exists; elsewhere the kernels stay plain (never called) functions.
jit: Any = triton.jit if triton is not None else _identity


def jit_varying(*names: str) -> Any:
    """`triton.jit` for a kernel whose integer arguments `names` change from step to step (batch
    sizes): Triton would otherwise compile a new variant when one becomes 1 or a multiple of 16,
    stalling a live step for a second or more."""
    if triton is None:
        return _identity
    return triton.jit(do_not_specialize=list(names))


def available() -> bool:
    """True when the Triton kernels can run here: Triton is installed and a CUDA device is visible."""
    return triton is not None and torch.cuda.is_available()


# Read once: pdl_enabled runs at every launch of the kernels that take it.
PDL_SETTING = env_flag("EMBER_PDL", True)


@cache
def _capability_major(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


def hopper_or_later(device: torch.device) -> bool:
    """Whether `device` is a CUDA GPU of compute capability 9.0 or later (H100, H200, B200)."""
    if device.type != "cuda":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _capability_major(index) >= 9


def pdl_enabled(device: torch.device) -> bool:
    """Whether decode-path kernels on `device` launch with programmatic dependent launch
    (Hopper or later, a Triton that has it; EMBER_PDL=0 turns it off). Such a kernel may be
    scheduled before the kernel ahead of it in the stream has finished; it waits (`gdc_wait`)
    until that kernel's writes are visible before it reads anything that kernel may write, and
    before it writes anything, and calls `gdc_launch_dependents` once its main loop is done
    (short kernels and decode attention: once they have waited), so the next one is launched
    during its tail. Before the wait a kernel reads only what no kernel of the forward pass
    writes (weights, the step's metadata, ready before its first layer runs). Batch-1 decode of
    the Llama-3.1-8B shape on the H200: 229.1-229.2 tok/s with it, 222.0-222.4 without;
    231.8-232.0 with those early reads (docs/benchmarks.md, 2026-12-04)."""
    return gdc_wait is not None and PDL_SETTING and hopper_or_later(device)


def pdl_launch(enabled: bool) -> dict[str, Any]:
    """The launch option of a kernel that takes a PDL constexpr (pdl_enabled)."""
    return {"launch_pdl": True} if enabled else {}


_ARRIVALS: dict[tuple[torch.device, str], torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []  # outgrown counters, kept for the CUDA graphs that hold them


def arrival_counts(device: torch.device, purpose: str, n: int) -> torch.Tensor:
    """At least `n` zeroed int32 counters on `device` for one kernel's programs to count their
    arrival on (the last to arrive finishes the work, e.g. merges the split pieces). Each launch
    must leave them zero (the last program resets its counter), so one buffer per device and
    `purpose` serves every launch on that device's stream, CUDA graphs included. A larger need
    gets a new buffer; the old one stays allocated for graphs captured with it."""
    have = _ARRIVALS.get((device, purpose))
    if have is None or have.numel() < n:
        if have is not None:
            _RETIRED.append(have)
        have = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
        _ARRIVALS[(device, purpose)] = have
    return have


@jit
def last_to_arrive(count, total):
    """Count this program in on `count` (one of arrival_counts' counters) among `total`; True
    for the last to arrive, which then reads what the others stored before counting in, and
    which resets the counter for the next launch. The barrier orders every thread's stores
    before the count's release; its acquire orders the last program's reads after it."""
    tl.debug_barrier()
    arrived = tl.atomic_add(count, 1, sem="acq_rel", scope="gpu")
    last = arrived == total - 1
    if last:
        tl.store(count, 0)
    return last


def next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@jit
def store_cache(at, x, mask, SATURATE: tl.constexpr):
    """x stored at `at` in the cache's dtype; fp8 caches (SATURATE > 0, their largest finite
    value) get x clamped to +-SATURATE first, so a cast never gives NaN."""
    if SATURATE > 0.0:
        x = tl.minimum(tl.maximum(x.to(tl.float32), -SATURATE), SATURATE)
    tl.store(at, x.to(at.dtype.element_ty), mask=mask)


@jit
def _write_kv_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    num_kv_heads,
    head_dim,
    block_size,
    stride_k_tok,
    stride_k_head,
    stride_v_tok,
    stride_v_head,
    stride_kc_block,
    stride_kc_slot,
    stride_kc_head,
    stride_vc_block,
    stride_vc_slot,
    stride_vc_head,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SATURATE: tl.constexpr,  # fp8 caches: their largest finite value; 0.0: no clamp
):
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    if slot < 0:
        return
    block = slot // block_size
    offset = slot % block_size
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_D)
    mask = (heads < num_kv_heads)[:, None] & (dims < head_dim)[None, :]

    k = tl.load(
        k_ptr + tok * stride_k_tok + heads[:, None] * stride_k_head + dims[None, :], mask=mask
    )
    k_dst = k_cache_ptr + block * stride_kc_block + offset * stride_kc_slot
    store_cache(k_dst + heads[:, None] * stride_kc_head + dims[None, :], k, mask, SATURATE)
    v = tl.load(
        v_ptr + tok * stride_v_tok + heads[:, None] * stride_v_head + dims[None, :], mask=mask
    )
    v_dst = v_cache_ptr + block * stride_vc_block + offset * stride_vc_slot
    store_cache(v_dst + heads[:, None] * stride_vc_head + dims[None, :], v, mask, SATURATE)


def check_cache_layout(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("KV cache tensors must have a contiguous last (head_dim) dimension")


def saturation(dtype: torch.dtype) -> float:
    """The largest finite value of an fp8 cache dtype (stores clamp to it); 0.0 for others."""
    return float(torch.finfo(dtype).max) if dtype in FP8_DTYPES else 0.0


def write_kv_triton(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store k, v [T, Hkv, D] at the flat slots [T] of caches [num_blocks, block_size, Hkv, D].

    Same contract as `write_kv`, plus: a slot of -1 is skipped (padding token). k and v may be
    strided views (e.g. slices of a fused qkv projection) as long as their last dim is contiguous.
    """
    num_tokens = k.shape[0]
    if num_tokens == 0:
        return
    _, block_size, num_kv_heads, head_dim = k_cache.shape
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    check_cache_layout(k_cache, v_cache)
    block_h = next_power_of_2(num_kv_heads)
    block_d = next_power_of_2(head_dim)
    _write_kv_kernel[(num_tokens,)](
        k,
        v,
        k_cache,
        v_cache,
        slot_mapping,
        num_kv_heads,
        head_dim,
        block_size,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        BLOCK_H=block_h,
        BLOCK_D=block_d,
        SATURATE=saturation(k_cache.dtype),
        num_warps=4 if block_h * block_d <= 4096 else 8,
    )
