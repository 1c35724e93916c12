"""The `gguf` section of gpu_check.py: ember's torch dequantization of GGUF tensors on CUDA against
the `gguf` package's numpy code on the CPU, for each type, on a 4096 x 14336 weight (Llama 3 8B's
MLP): max abs difference (PASS if every value is within one float32 ulp of the reference), time
and output bandwidth in bf16, and numpy's time for the same tensor. Then a GGUF file read the way
the converter reads it (GGUFModel.tensors: bytes through pinned memory to the GPU, llama's q rows
put back): the same bf16 tensors as on the CPU, and the time of each path."""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

from ember.loader.gguf_dequant import dequantize_blocks
from ember.loader.gguf_model import GGUFModel

Q = gguf.GGMLQuantizationType
TYPES = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q5_0)
FALLBACK = (Q.Q5_0,)  # dequantized by gguf's numpy code, then moved: checks the path only
ROWS, COLS = 4096, 14336
# (GGUF name, HF name, type, rows) of the file: one llama layer of Llama 3 8B's sizes.
FILE_TENSORS = (
    ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", Q.Q6_K, 4096),
    ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", Q.Q8_0, 4096),
    ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight", Q.Q4_K, 4096),
    ("blk.0.ffn_up.weight", "model.layers.0.mlp.up_proj.weight", Q.Q5_K, 4096),
    ("blk.0.ffn_gate.weight", "model.layers.0.mlp.gate_proj.weight", Q.Q4_0, 4096),
    ("token_embd.weight", "model.embed_tokens.weight", Q.F16, 16384),
)


@dataclass(slots=True)
class _Check:
    ok: bool
    max_abs: float  # largest |ours - gguf's| in float32
    ulps: float  # the same, in float32 ulps of the reference value
    numpy_ms: float
    raw: torch.Tensor  # the tensor's bytes on the device, for timing


def _check(qtype: gguf.GGMLQuantizationType, dev: torch.device, rows: int, cols: int) -> _Check:
    from tests.loader.gguf_blocks import random_blocks

    stored = random_blocks(qtype, rows, cols, seed=int(qtype))
    t0 = time.perf_counter()
    want = gguf.quants.dequantize(stored, qtype)
    numpy_ms = (time.perf_counter() - t0) * 1e3
    ref = torch.from_numpy(np.ascontiguousarray(want, dtype=np.float32)).reshape(rows, cols)
    ref = ref.to(dev)
    raw = torch.from_numpy(stored).to(dev)
    got = dequantize_blocks(raw, qtype, (rows, cols), torch.float32)
    diff = (got - ref).abs()
    ulp = torch.nextafter(ref.abs(), torch.tensor(float("inf"), device=dev)) - ref.abs()
    ok = got.shape == (rows, cols) and bool((diff <= ulp).all().item())
    bf16 = dequantize_blocks(raw, qtype, (rows, cols), torch.bfloat16)
    ok &= torch.equal(bf16, got.to(torch.bfloat16))
    return _Check(ok, diff.max().item(), (diff / ulp).max().item(), numpy_ms, raw)


def _time_ms(raw: torch.Tensor, qtype: gguf.GGMLQuantizationType, iters: int) -> float:
    dequantize_blocks(raw, qtype, (ROWS, COLS), torch.bfloat16)  # warm up
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        dequantize_blocks(raw, qtype, (ROWS, COLS), torch.bfloat16)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def _read_all(
    model: GGUFModel, names: list[str], dev: str
) -> tuple[dict[str, torch.Tensor], float]:
    """The converter's loop (each tensor back on the CPU as it comes) and its time in s."""
    t0 = time.perf_counter()
    out = {name: t.cpu() for name, t in model.tensors(names, dev, torch.bfloat16)}
    return out, time.perf_counter() - t0


def _file_check() -> bool:
    from tests.loader.gguf_blocks import random_blocks, write_tensors

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "layer.gguf"
        tensors = {
            name: (random_blocks(qtype, rows, COLS if "ffn" in name else 4096, seed), qtype)
            for seed, (name, _, qtype, rows) in enumerate(FILE_TENSORS)
        }
        write_tensors(path, "llama", tensors, heads=32)
        model = GGUFModel.open(path)
        names = [hf for _, hf, _, _ in FILE_TENSORS]
        _read_all(model, names, "cuda")  # warm up: CUDA context, pinned pool, page cache
        cpu, cpu_s = _read_all(model, names, "cpu")
        gpu, gpu_s = _read_all(model, names, "cuda")
    ok = cpu.keys() == gpu.keys() and all(torch.equal(cpu[n], gpu[n]) for n in names)
    nbytes = sum(t.numel() * t.element_size() for t in gpu.values())
    print(
        f"\nGGUFModel.tensors, one llama layer + embedding ({nbytes / 1e9:.2f} GB bf16): "
        f"cuda {gpu_s:.3f} s ({nbytes / gpu_s / 1e9:.1f} GB/s), cpu {cpu_s:.3f} s, "
        f"same tensors: {'PASS' if ok else 'FAIL'}"
    )
    return ok


def section_gguf(args: argparse.Namespace) -> bool:
    dev = torch.device("cuda")
    ok = True
    print(
        f"{'type':6} {'raw MB':>8} {'max abs':>10} {'ulps':>5} {'ms bf16':>8} {'GB/s out':>9} "
        f"{'numpy ms':>9}  (one {ROWS}x{COLS} weight)"
    )
    for qtype in TYPES:
        check = _check(qtype, dev, ROWS, COLS)
        ms = _time_ms(check.raw, qtype, 3 if qtype in FALLBACK else 20)
        gbs = ROWS * COLS * 2 / ms / 1e6
        name = qtype.name + ("*" if qtype in FALLBACK else "")
        print(
            f"{name:6} {check.raw.numel() / 1e6:8.1f} {check.max_abs:10.2e} {check.ulps:5.1f} "
            f"{ms:8.3f} {gbs:9.1f} {check.numpy_ms:9.1f}  {'PASS' if check.ok else 'FAIL'}",
            flush=True,
        )
        ok &= check.ok
        del check
    print("* numpy fallback on the CPU, then copied to the GPU (timed with the copy)")
    return _file_check() and ok
