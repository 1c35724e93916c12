"""The `fp8-weights` section of gpu_check.py: FP8 checkpoints loaded on CUDA (the float8 -> bf16
cast in the streamer's staging copy, the scales applied in place on the device) against the
float32 reference dequantization on the CPU (tests/models/fp8_checkpoints.py).

1. Tiny random models of four architectures, one FP8 layout each: loaded in bf16 on CUDA, every
   quantized weight must equal the CPU reference rounded to bf16, bit for bit; loaded in float32
   by the engine (LLM on CUDA), greedy tokens must equal transformers' on the CPU with the
   reference weights (a divergence passes only at a near-tie, as in the `engine` section).
2. Four layers of Llama-3-8B's shapes as Qwen3-8B-FP8 stores them (128x128 blocks) and the
   same weights as a bf16 checkpoint: both loaded in bf16 on CUDA must hold identical
   parameters; the FP8 load's peak of allocated memory may pass the bf16 load's by the float8
   staging of the tensors in flight (at most the ring's bytes, the largest tensor and the
   scaling's slice beside), never by a second copy. Load times of both are printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

CASES: tuple[tuple[str, str], ...] = (
    ("llama3", "fp8-block"),
    ("qwen3", "ct-channel"),
    ("qwen2", "fp8-tensor"),
    ("gemma2", "ct-block"),
)
GIB = 2**30


def _tiny_fp8(arch: str, scheme: str, root: Path) -> tuple[Path, Any, dict[str, torch.Tensor]]:
    """(the FP8 checkpoint's directory, transformers' model on the reference weights, the
    reference weights)."""
    import transformers as tf

    from ember.registry import ModelStore, default_home
    from tests.engine.hf_models import TOKENIZER_FILES, build_config
    from tests.models.fp8_checkpoints import SCHEMES, reference_model, write_fp8

    tiny = ModelStore(default_home()).resolve("tiny").path
    vocab = json.loads((tiny / "config.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    hf = tf.AutoModelForCausalLM.from_config(build_config(arch, vocab)).float().eval()
    out = root / "fp8"
    reference = write_fp8(hf, out, SCHEMES[scheme])
    hf = reference_model(hf, out, reference, root / "reference")
    for name in TOKENIZER_FILES:
        if (tiny / name).exists():
            shutil.copy(tiny / name, out / name)
    return out, hf, reference


def _same_weights(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> int:
    """How many reference weights the model holds other than bit for bit in bf16."""
    from ember.models.weights import checkpoint_slots

    slots = checkpoint_slots(model)
    return sum(
        not torch.equal(slots[n].target().cpu(), w.to(torch.bfloat16)) for n, w in reference.items()
    )


def _tiny_cases() -> bool:
    from ember import LLM, SamplingParams
    from ember.models import load_model
    from scripts.gpu_engine_check import _diverges_at_tie, _prompts
    from tests.engine.hf_models import hf_greedy_with_gaps

    ok = True
    steps = 16
    params = SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True)
    print(f"{'arch':8} {'layout':15} {'bf16 weights':>14} {'fp32 engine tokens':>20}")
    for arch, scheme in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            path, hf, reference = _tiny_fp8(arch, scheme, Path(tmp))
            model = load_model(path, torch.bfloat16, torch.device("cuda"))
            differ = _same_weights(model, reference)
            del model
            prompts = _prompts()
            expected, gaps = zip(*(hf_greedy_with_gaps(hf, p, steps) for p in prompts), strict=True)
            llm = LLM(str(path), dtype="float32", device="cuda", max_model_len=512)
            outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
            got = [o.outputs[0].token_ids for o in outs]
            same = sum(g == e for g, e in zip(got, expected, strict=True))
            ties = sum(
                g != e and _diverges_at_tie(g, e, gap)
                for g, e, gap in zip(got, expected, gaps, strict=True)
            )
            passed = differ == 0 and same + ties == len(prompts)
            ok &= passed
            weights = f"{len(reference) - differ}/{len(reference)}"
            tokens = f"{same}/{len(prompts)}" + (f" ({ties} ties)" if ties else "")
            print(f"{arch:8} {scheme:15} {weights:>14} {tokens:>20} {'PASS' if passed else 'FAIL'}")
            del llm, hf
            torch.cuda.empty_cache()
    return ok


def _large_pair(root: Path) -> tuple[Path, Path]:
    """An FP8 checkpoint of four Llama-3-8B layers (128x128 blocks) and its bf16 twin holding
    the reference dequantization."""
    import transformers as tf
    from safetensors.torch import load_file, save_file

    from tests.models.fp8_checkpoints import SCHEMES, write_fp8

    cfg = tf.LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=4,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=8192,
        max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    hf = tf.LlamaForCausalLM(cfg).bfloat16().eval()
    fp8_dir, bf16_dir = root / "fp8", root / "bf16"
    reference = write_fp8(hf, fp8_dir, SCHEMES["fp8-block-128"])
    del hf
    shutil.copytree(fp8_dir, bf16_dir)
    tensors = load_file(str(bf16_dir / "model.safetensors"))
    plain = {n: t for n, t in tensors.items() if t.dtype != torch.float8_e4m3fn}
    plain = {n: t for n, t in plain.items() if not n.endswith("weight_scale_inv")}
    plain.update({n: w.to(torch.bfloat16) for n, w in reference.items()})
    save_file(plain, str(bf16_dir / "model.safetensors"), metadata={"format": "pt"})
    raw = json.loads((bf16_dir / "config.json").read_text())
    del raw["quantization_config"]
    (bf16_dir / "config.json").write_text(json.dumps(raw))
    return fp8_dir, bf16_dir


def _load(path: Path) -> tuple[torch.nn.Module, int, float]:
    """The model loaded in bf16 on CUDA, its peak allocated bytes above before, and seconds."""
    from ember.models import load_model

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    model = load_model(path, torch.bfloat16, torch.device("cuda"))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    return model, torch.cuda.max_memory_allocated() - base, seconds


def _large_case() -> bool:
    from ember.loader import StreamOptions
    from ember.loader.local import LocalSource
    from ember.models.fp8 import SLICE_ELEMENTS

    with tempfile.TemporaryDirectory() as tmp:
        fp8_dir, bf16_dir = _large_pair(Path(tmp))
        _load(bf16_dir)  # the first load pays for CUDA's and the kernels' start
        plain, plain_peak, plain_s = _load(bf16_dir)
        plain_params = {n: p.detach().clone() for n, p in plain.named_parameters()}
        del plain
        model, peak, seconds = _load(fp8_dir)
        differ = [n for n, p in model.named_parameters() if not torch.equal(p, plain_params[n])]
        size = sum(p.numel() * p.element_size() for p in plain_params.values())
        threads = LocalSource(fp8_dir).concurrency
    largest = max(p.numel() for p in plain_params.values())  # bytes in float8
    window = (threads + 4) * StreamOptions().chunk_bytes + 2 * largest + 3 * SLICE_ELEMENTS * 4
    extra = peak - plain_peak
    passed = not differ and extra < window
    print(
        f"4 Llama-3-8B layers, {size / GIB:.2f} GiB in bf16: parameters equal to the bf16 "
        f"twin's: {'yes' if not differ else differ[:3]}; peak allocated {peak / GIB:.2f} GiB "
        f"(bf16 load {plain_peak / GIB:.2f}, +{extra / GIB:.2f}, allowed +{window / GIB:.2f}); "
        f"load {seconds:.2f} s "
        f"(bf16 {plain_s:.2f} s) {'PASS' if passed else 'FAIL'}"
    )
    return passed


def section_fp8_weights(args: argparse.Namespace) -> bool:
    ok = _tiny_cases()
    return _large_case() and ok
