"""Constrained decoding: outputs of the tiny random model match the grammar they were given, in
the in-thread core and in the core's own process; bad grammars are refused before the engine."""

from __future__ import annotations

import asyncio
import json
import pickle
import re
from pathlib import Path

import jsonschema
import pytest

from ember import LLM, SamplingParams
from ember.engine.args import EngineArgs
from ember.engine.async_engine import AsyncEngine
from ember.engine.structured import StructuredSpec
from ember.errors import InvalidRequestError
from ember.registry import ModelStore, default_home
from ember.sampling_params import OutputKind

SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
    },
    "required": ["ok", "color"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return ModelStore(default_home()).resolve("tiny").path


@pytest.fixture(scope="module")
def tiny_llm(tiny_dir: Path) -> LLM:
    return LLM(str(tiny_dir), dtype="float32", device="cpu", max_num_seqs=4)


def _params(spec: StructuredSpec, seed: int, max_tokens: int = 64) -> SamplingParams:
    return SamplingParams(temperature=1.0, seed=seed, max_tokens=max_tokens, structured=spec)


def test_json_schema_outputs_validate(tiny_llm: LLM) -> None:
    spec = StructuredSpec.json_schema(SCHEMA)
    outs = tiny_llm.generate(["hello"] * 3, [_params(spec, seed) for seed in range(3)])
    for out in outs:
        text = out.outputs[0].text
        assert out.outputs[0].finish_reason == "stop", text
        jsonschema.validate(json.loads(text), SCHEMA)


def test_regex_and_greedy_mixed_batch(tiny_llm: LLM) -> None:
    regex = SamplingParams(
        temperature=0.0, max_tokens=40, structured=StructuredSpec("regex", r"[0-9]{3}-[a-c]{2}")
    )
    free = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    outs = tiny_llm.generate(["x", "y"], [regex, free])
    assert re.fullmatch(r"[0-9]{3}-[a-c]{2}", outs[0].outputs[0].text)
    assert len(outs[1].outputs[0].token_ids) == 8


def test_spec_pickles_and_bad_schema_is_refused() -> None:
    spec = StructuredSpec.json_schema(SCHEMA)
    params = SamplingParams(structured=spec)
    assert pickle.loads(pickle.dumps(params)).structured == spec
    with pytest.raises(InvalidRequestError, match="json schema"):
        SamplingParams(structured=StructuredSpec("json_schema", '{"type": "bogus"}'))


def test_process_core(tiny_dir: Path) -> None:
    """The spec crosses to the core's process and the grammar is built there."""
    eng = AsyncEngine(EngineArgs(str(tiny_dir), dtype="float32", device="cpu"), multiprocess=True)
    try:

        async def main() -> str:
            ids = eng.tokenizer.encode("hi")
            params = _params(StructuredSpec.json_schema(SCHEMA), seed=7)
            params.output_kind = OutputKind.DELTA
            return "".join([o.outputs[0].text async for o in eng.generate("s", ids, params)])

        jsonschema.validate(json.loads(asyncio.run(main())), SCHEMA)
    finally:
        eng.shutdown()


def test_bitmask_masks_exactly_the_disallowed_tokens() -> None:
    import torch

    from ember.engine.structured import apply_bitmask

    logits = torch.zeros(3, 40)
    bitmask = torch.zeros(2, 2, dtype=torch.int32)
    bitmask[0, 0] = 1 << 3  # row 0 of the mask (logits row 2): token 3 only
    bitmask[1, 1] = 1 << 2  # row 1 (logits row 0): token 34 only
    apply_bitmask(logits, [2, 0], bitmask)
    assert torch.isfinite(logits[2]).nonzero().flatten().tolist() == [3]
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [34]
    assert torch.isfinite(logits[1]).all()
