"""The fused small-batch GEMV path of the Llama-family layers (EMBER_FUSED_GEMV, layers/
small_batch.py) generates what the usual path generates: the tiny Llama on CPU, its decode steps
through the Triton GEMVs under Triton's interpreter. Skipped where Triton is not installed (CI)."""

from __future__ import annotations

from tests.ops.test_triton_interpreter import (  # noqa: F401 (pytestmark: the same skips)
    pytestmark,
    run_interpreted,
)

_CHECK = r"""
from ember import LLM, SamplingParams
from ember.layers import small_batch
from ember.registry import ModelStore, default_home

tiny = str(ModelStore(default_home()).resolve("tiny").path)
prompts = [{"prompt_token_ids": p} for p in ([5, 17, 42, 99, 7, 3, 250, 11], [300, 12, 8])]
greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
llm = LLM(tiny, dtype="float32", device="cpu", block_size=4)
def run():  # one prompt at a time: its decode steps have one row
    return [llm.generate([p], greedy)[0].outputs[0].token_ids for p in prompts]
want = run()
rows = []
small_batch.applies = lambda x: rows.append(x.shape[0]) or x.shape[0] == 1
got = run()
assert got == want, (got, want)
assert any(r == 1 for r in rows) and any(r > 1 for r in rows), rows
print("ok")
"""


def test_fused_layers_generate_the_same_tokens() -> None:
    run_interpreted(_CHECK)
