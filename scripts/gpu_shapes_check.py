"""The `shapes` section of gpu_check.py: ember on CUDA (Triton attention, CUDA graphs) at the real
shapes of the models it serves (random weights) against transformers on the same weights:
Gemma 2 9B, Gemma 3 4B, and Qwen3 4B with YaRN rope scaling.

Random weights at real shapes give near-flat distributions, so exact greedy parity over many
steps is not a fair test in bf16. Instead ember generates greedily and transformers scores the
same sequence in float32 (teacher forcing, eager attention): at every step ember's token must be
within TOL nats of transformers' best token, and ember's logprob of it must be as close to
transformers' float32 value as transformers' own run in the same dtype is (or within TOL). Prompts run past the sliding windows (Gemma 2: 4096, Gemma 3: 1024), so the
windowed layers are exercised.

bf16 (the serving dtype) runs the whole model; float32 runs its first FP32_LAYERS layers (every
layer kind, both rope bases), where the tolerance is tight. Through all 34-42 layers of a random
model float32 rounding differences grow to ~1e-2 nats between implementations, while over a few
layers ember, transformers on CUDA and transformers on the CPU agree to ~1e-5 (seen on the H200).

The reference is built in float32 (weights rounded to bf16 values, saved as bf16). A model built
in bf16 keeps bf16 buffers after .float() (Gemma 3's embed_scale becomes 50.5 for sqrt(2560) =
50.596: ~1e-2 nats off in float32, seen on the H200), and casting a built model to bf16 also
rounds the float32 rope frequencies (~0.6 nats at 1,500 tokens on Gemma 2, seen on the H200).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

# (name, transformers config class, config kwargs); the models' shapes as published.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "gemma2-9b": (
        "Gemma2Config",
        dict(
            vocab_size=256000,
            hidden_size=3584,
            intermediate_size=14336,
            num_hidden_layers=42,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=4096,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            max_position_embeddings=8192,
        ),
    ),
    "gemma3-4b": (
        "Gemma3TextConfig",
        dict(
            vocab_size=262208,
            hidden_size=2560,
            intermediate_size=10240,
            num_hidden_layers=34,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=1024,
            max_position_embeddings=131072,
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
            sliding_window_pattern=6,
        ),
    ),
    # Qwen3 4B with YaRN enabled as Qwen documents it (factor 4 over 32768; max_position_
    # embeddings stays 40960): every rope pair, the ramp and the attention factor in play.
    "qwen3-4b-yarn": (
        "Qwen3Config",
        dict(
            vocab_size=151936,
            hidden_size=2560,
            intermediate_size=9728,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=40960,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 32768,
                "rope_theta": 1e6,
            },
        ),
    ),
}
PROMPT_LENGTHS = (9, 300, 1500, 5000)
STEPS = 16
TOL = {torch.bfloat16: 0.25, torch.float32: 2e-3}
FP32_LAYERS = 6


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, 990, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


def _make(name: str, out: Path, device: str, layers: int | None = None) -> Any:
    import transformers as tf

    from ember.registry import ModelStore, default_home
    from tests.engine.hf_models import TOKENIZER_FILES

    cls_name, kwargs = SHAPES[name]
    if layers is not None:
        kwargs = {**kwargs, "num_hidden_layers": layers}
    config = getattr(tf, cls_name)(**kwargs, initializer_range=0.02)
    config._attn_implementation = "eager"  # softcap and window as the reference computes them
    torch.manual_seed(0)
    # Built in float32, so that every buffer (rope frequencies above all) is exact, with
    # bf16-representable weights, saved as bf16: ember in either dtype loads exactly these values.
    with torch.device(device):
        model = tf.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.to(torch.bfloat16))
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    model.save_pretrained(out, state_dict=state, safe_serialization=True)
    del state
    tiny = ModelStore(default_home()).resolve("tiny").path
    for file in TOKENIZER_FILES:
        if (tiny / file).exists():
            shutil.copy(tiny / file, out / file)
    return model


def _ember(
    path: Path, dtype: str, device: str, prompts: list[list[int]]
) -> list[tuple[list[int], list[float]]]:
    from ember import LLM, SamplingParams

    llm = LLM(str(path), dtype=dtype, device=device, max_model_len=8192, max_num_seqs=8)
    params = SamplingParams(temperature=0.0, max_tokens=STEPS, ignore_eos=True, logprobs=1)
    results = []
    for out in llm.generate([{"prompt_token_ids": p} for p in prompts], params):
        o = out.outputs[0]
        assert o.logprobs is not None
        chosen = [row[tok].logprob for tok, row in zip(o.token_ids, o.logprobs, strict=True)]
        results.append((list(o.token_ids), chosen))
    del llm
    _free()
    return results


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _score(hf: Any, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """transformers' log-probabilities (float32) at the positions that predict each token."""
    ids = torch.tensor([prompt + tokens[:-1]], device=hf.device)
    with torch.no_grad():
        logits = hf(ids).logits[0, len(prompt) - 1 :].float()
    return torch.log_softmax(logits, dim=-1)


def _compare(name: str, dtype: torch.dtype, hf: Any, path: Path, device: str) -> bool:
    """ember in `dtype` against transformers in float32 on the same weights. In bf16, ember's
    logprob error may be at most twice transformers' own bf16 error (or TOL): being as accurate
    as the reference implementation is the bar, since random deep models amplify rounding."""
    prompts = _prompts()
    t0 = time.perf_counter()
    got = _ember(path, str(dtype).removeprefix("torch."), device, prompts)
    seconds = time.perf_counter() - t0
    exact = [_score(hf, p, tokens) for p, (tokens, _) in zip(prompts, got, strict=True)]
    if dtype != torch.float32:
        hf.to(dtype)  # transformers as users run it in that dtype, for the "hf err" column
    same_dtype = [_score(hf, p, tokens) for p, (tokens, _) in zip(prompts, got, strict=True)]
    ok = True
    for prompt, (tokens, lps), ref, ref32 in zip(prompts, got, same_dtype, exact, strict=True):
        idx = torch.tensor(tokens, device=ref32.device)
        chosen32 = ref32.gather(1, idx[:, None])[:, 0].cpu()
        deficit = (ref32.max(dim=1).values.cpu() - chosen32).max().item()
        same_top = (ref32.argmax(dim=1) == idx).sum().item()
        ember_err = (torch.tensor(lps) - chosen32).abs().max().item()
        hf_err = (ref.gather(1, idx[:, None])[:, 0].cpu() - chosen32).abs().max().item()
        passed = deficit <= TOL[dtype] and ember_err <= max(2 * hf_err, TOL[dtype])
        ok &= passed
        print(
            f"{name:10} {str(dtype)[6:]:9} {len(prompt):6} {same_top:>3}/{STEPS} "
            f"{deficit:10.2e} {ember_err:10.2e} {hf_err:10.2e} {'PASS' if passed else 'FAIL'}"
        )
    print(f"{name:10} {str(dtype)[6:]:9} ember load+generate {seconds:.1f} s")
    return ok


def section_shapes(args: argparse.Namespace) -> bool:
    names = getattr(args, "shapes", None) or list(SHAPES)
    print(
        f"{'model':10} {'dtype':9} {'prompt':>6} {'top1':>6} {'deficit':>10} {'ember err':>10} "
        f"{'hf err':>10}   (against transformers in float32; hf err: transformers in the dtype)"
    )
    ok = True
    for name in names:
        for dtype, layers in ((torch.bfloat16, None), (torch.float32, FP32_LAYERS)):
            with tempfile.TemporaryDirectory(dir=getattr(args, "tmp", None)) as tmp:
                t0 = time.perf_counter()
                hf = _make(name, Path(tmp), args.device, layers)
                depth = f"{layers} layers" if layers else "all layers"
                print(f"{name}: {depth}, built and saved in {time.perf_counter() - t0:.1f} s")
                ok &= _compare(name, dtype, hf, Path(tmp), args.device)
                del hf
                _free()
    return ok
