"""The `engine` section of gpu_check.py: the whole engine on CUDA (Triton attention, CUDA graphs,
chunked prefill) against transformers on the same random weights.

float32: greedy tokens must equal transformers' exactly, with every KV slot that no request
wrote filled with NaN. bfloat16: the first generated token
(one forward pass) must agree in most positions; later tokens drift, as bf16 does.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

ARCHS = ("llama3", "qwen2", "qwen3", "mistral", "mistral-window", "gemma2", "gemma3")


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
    from ember.layers import small_batch
    from tests.engine.hf_models import hf_greedy_with_gaps
    from tests.engine.test_kv_unzeroed import poison_unwritten_kv

    ok = True
    steps = 24
    fused_default = small_batch.ENABLED
    params = SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True)
    print(f"{'arch':10} {'mode':26} {'result':>10}")
    for arch in ARCHS:
        with tempfile.TemporaryDirectory() as tmp:
            # The oracle is transformers in float32 on the CPU (deterministic); its agreement
            # with transformers on CUDA is printed too.
            hf = _hf_model(arch, Path(tmp))
            prompts = _prompts()
            expected, gaps = zip(*(hf_greedy_with_gaps(hf, p, steps) for p in prompts), strict=True)
            hf_cuda = [hf_greedy_with_gaps(hf.to("cuda"), p, steps)[0] for p in prompts]
            same_hf = sum(a == b for a, b in zip(hf_cuda, expected, strict=True))
            print(f"{arch:10} {'transformers cuda vs cpu':26} {same_hf}/{len(prompts)}")
            for mode, kwargs in (
                ("fp32 graphs all captured", {"capture_all_graphs": True}),
                # One-sequence prefill graphs: none before ready, each captured after the first
                # prompt that wanted it, so later prompts replay graphs captured mid-run.
                ("fp32 graphs one at a time", {}),
                # 12 rows pad to the largest start-up graph (64) for one step, then replay the
                # 16-row graph captured after it.
                ("fp32 graphs 12 rows", {}),
                ("fp32 eager chunked(32)", {"enforce_eager": True, "max_num_batched_tokens": 32}),
                # The modes above run with async scheduling (the default); these without it.
                ("fp32 graphs sync", {"capture_all_graphs": True, "async_scheduling": False}),
                (
                    "fp32 eager sync chunked(32)",
                    {
                        "enforce_eager": True,
                        "max_num_batched_tokens": 32,
                        "async_scheduling": False,
                    },
                ),
                # The modes above decode one row through the fused GEMVs (Llama-family layers
                # without biases; small_batch.py, on by default); this one through cuBLAS.
                ("fp32 cuBLAS gemv one at a time", {}),
            ):
                small_batch.ENABLED = "cuBLAS" not in mode
                llm = LLM(tmp, dtype="float32", device="cuda", max_model_len=512, **kwargs)
                # The cache is not zeroed on CUDA: NaN in every slot no request wrote must not
                # reach the tokens (tests/engine/test_kv_unzeroed.py on the CPU).
                poison_unwritten_kv(llm)
                batches = [[p] for p in prompts] if "one at a time" in mode else [prompts]
                if "12 rows" in mode:
                    batches = [prompts + prompts]
                got = [
                    o.outputs[0].token_ids
                    for batch in batches
                    for o in llm.generate([{"prompt_token_ids": p} for p in batch], params)
                ]
                if "12 rows" in mode:  # a prompt passes if both of its copies match
                    pairs = zip(got[:6], got[6:], expected, strict=True)
                    got = [first if first != e else second for first, second, e in pairs]
                    graphs = llm.engine.core.runner.graphs
                    assert graphs is not None, "graphs mode without CUDA graphs"
                    family = graphs.family
                    if 16 not in family.graphs:
                        print(f"    the 16-row graph was not captured: {sorted(family.graphs)}")
                        ok = False
                same = sum(g == e for g, e in zip(got, expected, strict=True))
                # A random model has near-ties; a divergence is only a failure where transformers'
                # top-2 logit gap at that step was not tiny.
                ties = sum(
                    g != e and _diverges_at_tie(g, e, gap)
                    for g, e, gap in zip(got, expected, gaps, strict=True)
                )
                passed = same + ties == len(prompts)
                ok &= passed
                note = f" ({ties} at near-ties)" if ties else ""
                for g, e, gap in zip(got, expected, gaps, strict=True):
                    if g != e:
                        i = next(j for j, (a, b) in enumerate(zip(g, e, strict=True)) if a != b)
                        print(f"    diverges at step {i}: top-2 gap there {gap[i]:.2e}")
                print(
                    f"{arch:10} {mode:26} {same}/{len(prompts)}{note} {'PASS' if passed else 'FAIL'}"
                )
                small_batch.ENABLED = fused_default
                del llm
            del hf
            torch.cuda.empty_cache()
    return ok


def _diverges_at_tie(got: list[int], expected: list[int], gaps: list[float]) -> bool:
    first = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
    return gaps[first] < 1e-3


def section_engine_extras(args: argparse.Namespace) -> bool:
    """Sampling options that leave the graphs and the async pipeline on CUDA: prompt logprobs
    (eager prefill, 512-row logits slices) against transformers' log-softmax, logit_bias and
    allowed_token_ids (host-side sampling), beside a plain request in the same batch."""
    from ember import LLM, SamplingParams

    ok = True
    prompt = _prompts()[5]  # 130 tokens: several chunks at max_num_batched_tokens 32
    print(f"{'arch':10} {'check':36} {'max err':>10} result")
    for arch in ("llama3", "gemma2"):
        with tempfile.TemporaryDirectory() as tmp:
            hf = _hf_model(arch, Path(tmp))
            with torch.no_grad():
                logits = hf(torch.tensor([prompt])).logits[0].float()
            want = torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(prompt[1:])[:, None])
            modes: tuple[tuple[str, dict[str, Any]], ...] = (
                ("graphs", {}),
                ("eager chunked(32)", {"enforce_eager": True, "max_num_batched_tokens": 32}),
            )
            for mode, kwargs in modes:
                llm = LLM(tmp, dtype="float32", device="cuda", max_model_len=512, **kwargs)
                plain = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
                scored = SamplingParams(temperature=0.0, max_tokens=4, prompt_logprobs=2)
                worst = int(logits[-1].argmin())
                biased = SamplingParams(
                    temperature=0.0, max_tokens=4, ignore_eos=True, logit_bias={worst: 100.0}
                )
                allowed = SamplingParams(
                    temperature=1.0,
                    seed=1,
                    max_tokens=8,
                    ignore_eos=True,
                    allowed_token_ids=[7, 11],
                )
                inputs: list[Any] = [{"prompt_token_ids": prompt}] * 4
                outs = llm.generate(inputs, [plain, scored, biased, allowed])
                lps = outs[1].prompt_logprobs
                got = torch.tensor(
                    [e[t].logprob for t, e in zip(prompt, lps or [], strict=False) if e is not None]
                )
                err = (
                    float((got - want[:, 0]).abs().max()) if len(got) == len(want) else float("inf")
                )
                checks = (
                    ("prompt logprobs " + mode, err, err < 1e-3),
                    ("logit_bias " + mode, 0.0, set(outs[2].outputs[0].token_ids) == {worst}),
                    (
                        "allowed_token_ids " + mode,
                        0.0,
                        set(outs[3].outputs[0].token_ids) <= {7, 11},
                    ),
                    ("KV freed " + mode, 0.0, llm.engine.core.kv.num_used_blocks == 0),
                )
                for name, e, passed in checks:
                    ok &= passed
                    print(f"{arch:10} {name:36} {e:10.2e} {'PASS' if passed else 'FAIL'}")
                del llm
                torch.cuda.empty_cache()
    return ok
