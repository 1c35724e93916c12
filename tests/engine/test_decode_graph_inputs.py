"""The decode-graph path's bookkeeping on the CPU (engine/cuda_graphs.py): a CudaGraphDecoder whose
"graphs" replay its forward eagerly, so that staging the step's inputs in one buffer, padding a
batch to its graph's size, and the graph's greedy argmax written in place as the next step's
input ids (async scheduling feeds them back without a copy) all run as on CUDA. The tokens must
equal the eager engine's, with and without async scheduling, greedy and sampled."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

import ember.ops
from ember import LLM, SamplingParams
from ember.engine.cuda_graphs import CudaGraphDecoder
from ember.layers.metadata import AttentionMetadata
from ember.ops.attention_ref import write_kv
from ember.registry import ModelStore, default_home

PROMPTS = [[5, 17, 42, 99, 7, 3, 250, 11], [300, 12, 8, 64, 21], [9, 9, 9], list(range(40, 70))]


class _EagerGraph:
    """Stands in for a captured CUDA graph: replay runs the decoder's forward for its size and
    leaves the logits where the captured graph would."""

    def __init__(self, decoder: CudaGraphDecoder, size: int, out: torch.Tensor) -> None:
        self.decoder, self.size, self.out = decoder, size, out

    def replay(self) -> None:
        self.out.copy_(self.decoder._forward(self.size))


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return ModelStore(default_home()).resolve("tiny").path


@pytest.fixture(autouse=True)
def _padding_slots_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows padding a batch to its graph's size have slot -1, which the Triton KV writer skips;
    the reference writer (every slot >= 0) gets only the real rows here."""

    def skipping(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor, slots: torch.Tensor) -> None:  # fmt: skip
        keep = slots >= 0
        write_kv(k_cache, v_cache, k[keep], v[keep], slots[keep])

    monkeypatch.setattr(ember.ops, "write_kv", skipping)


def _llm(tiny_dir: Path, async_: bool, graphs: bool) -> LLM:
    llm = LLM(str(tiny_dir), dtype="float32", device="cpu", max_num_seqs=8, async_scheduling=async_)
    if graphs:
        core = llm.engine.core
        runner = core.runner
        decoder = CudaGraphDecoder(
            runner.model, runner.kv_caches, torch.device("cpu"), 8,
            -(-core.max_model_len // runner.block_size), core.max_model_len,
        )  # fmt: skip
        frozen = decoder._metadata

        def metadata(size: int) -> AttentionMetadata:
            # The Triton kernels read the sequence lengths from the device buffer; the
            # reference attention reads the host list, which a graph would have frozen.
            md = frozen(size)
            return dataclasses.replace(md, seq_lens_cpu=md.seq_lens.tolist())

        decoder._metadata = metadata  # type: ignore[method-assign]
        for size in decoder.sizes:  # "captured" with no cache writes (the slots are -1)
            graph = _EagerGraph(decoder, size, decoder._forward(size))
            decoder.family._record(size, graph, graph.out)  # type: ignore[arg-type]
        runner.graphs = decoder
    return llm


def _run(llm: LLM, params: list[SamplingParams]) -> list[list[int]]:
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)
    core = llm.engine.core
    assert core.kv.num_used_blocks == 0 and not core.scheduler.has_unfinished()
    return [list(o.outputs[0].token_ids) for o in outs]


def _spy(llm: LLM) -> dict[str, int]:
    """Counts the decoder's replays and those whose input ids were already in place."""
    decoder = llm.engine.core.runner.graphs
    assert isinstance(decoder, CudaGraphDecoder)
    counts = {"replays": 0, "in_place": 0}
    run = decoder.run

    def counted(input_ids: list[int] | torch.Tensor, **kw: Any) -> torch.Tensor:
        counts["replays"] += 1
        if isinstance(input_ids, torch.Tensor):
            counts["in_place"] += input_ids.data_ptr() == decoder.input_ids.data_ptr()
        return run(input_ids, **kw)

    decoder.run = counted  # type: ignore[method-assign]
    return counts


@pytest.mark.parametrize("async_", [True, False])
def test_greedy_decoding_through_the_graph_path_matches_eager(tiny_dir: Path, async_: bool) -> None:
    # Requests that finish early shrink the batch: 3 rows replay the graph of 4 (a padding
    # row), and the rows left take their ids from the last replay's by a gather.
    params = [
        SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in (12, 7, 12, 4)
    ]
    want = _run(_llm(tiny_dir, False, graphs=False), params)
    llm = _llm(tiny_dir, async_, graphs=True)
    counts = _spy(llm)
    assert _run(llm, params) == want
    assert counts["replays"] > 0
    if async_:  # greedy rows decoding on: their ids are the last replay's argmax, in place
        assert counts["in_place"] > 0


def test_sampled_and_penalised_rows_through_the_graph_path_match_eager(tiny_dir: Path) -> None:
    params = [
        SamplingParams(temperature=0.8, top_k=20, seed=7, max_tokens=10, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True),
        SamplingParams(temperature=0.0, repetition_penalty=1.3, max_tokens=10, ignore_eos=True),
        SamplingParams(temperature=1.0, seed=3, max_tokens=10, ignore_eos=True),
    ]
    want = _run(_llm(tiny_dir, False, graphs=False), params)
    llm = _llm(tiny_dir, True, graphs=True)
    counts = _spy(llm)
    assert _run(llm, params) == want
    assert counts["replays"] > 0
