"""Warm KV: the prefix-cache blocks of common prompts (a long system prompt, say), computed once
(`ember warm`, e.g. while building an image) and loaded into the KV cache at start, so the first
request that begins with such a prompt skips its prefill.

On disk, a folder: `kv.safetensors` with one K and one V tensor per layer, [blocks, block_size,
kv_heads, head_dim] in the serving dtype, and `warm_kv.json` with each block's tokens in chain
order (prompts one after another) and what the cache must match (block size, dtype, shapes).
Hashes are recomputed from the tokens when loading, so nothing depends on the writer's process.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from ember.engine.kv_cache import hash_block
from ember.errors import ModelLoadError
from ember.ops.attention_ref import copy_rows
from ember.sampling_params import SamplingParams

if TYPE_CHECKING:
    from ember.engine.core import EngineCore

log = logging.getLogger(__name__)

WARM_DIR = "warm_kv"
_META = "warm_kv.json"
_TENSORS = "kv.safetensors"


def _fingerprint(core: EngineCore) -> dict[str, Any]:
    c = core.model_config
    return {
        "block_size": core.block_size,
        "dtype": str(core.kv_dtype).removeprefix("torch."),  # the cache's: fp8 or the model's
        "num_layers": c.num_hidden_layers,
        "num_kv_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
    }


def export_warm_kv(core: EngineCore, prompts: list[list[int]], out: Path) -> int:
    """Prefill each prompt, then save the whole blocks of its prefix that are cached. Returns the
    number of blocks written."""
    params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
    chains: list[list[tuple[int, ...]]] = []
    block_ids: list[int] = []
    for i, ids in enumerate(prompts):
        req = core.make_request(f"warm-{i}", ids, params, frozenset())
        core.add_request(req)
        while core.has_unfinished():
            core.step()
        chain = core.kv.cached_chain(ids)
        chains.append([b.token_ids or () for b in chain])
        block_ids += [b.block_id for b in chain]
    index = torch.tensor(block_ids, dtype=torch.int64, device=core.device)
    tensors: dict[str, torch.Tensor] = {}
    for layer, (k, v) in enumerate(core.kv_caches):
        tensors[f"k.{layer}"] = k.index_select(0, index).contiguous().cpu()
        tensors[f"v.{layer}"] = v.index_select(0, index).contiguous().cpu()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / _TENSORS))
    meta = {"fingerprint": _fingerprint(core), "prompts": [[list(t) for t in c] for c in chains]}
    (out / _META).write_text(json.dumps(meta))
    return len(block_ids)


def import_warm_kv(core: EngineCore, src: Path) -> int:
    """Load saved blocks into free KV blocks and register them in the prefix cache. Returns how
    many were loaded. Blocks made for another model, dtype or block size, or unreadable files,
    are skipped with a warning: they are an optimisation, never a reason not to serve."""
    try:
        meta = json.loads((src / _META).read_text())
        tensors = load_file(str(src / _TENSORS))
        rows = sum(len(chain) for chain in meta["prompts"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("warm KV blocks in %s not loaded: cannot read them (%s)", src, exc)
        return 0
    want = _fingerprint(core)
    if meta.get("fingerprint") != want:
        log.warning(
            "warm KV blocks in %s not loaded: made for %s, this engine runs %s; run 'ember warm' "
            "again with the serving dtype and block size",
            src, meta.get("fingerprint"), want,
        )  # fmt: skip
        return 0
    shape = (rows, *core.kv_caches[0][0].shape[1:])
    names = [f"{kv}.{layer}" for layer in range(len(core.kv_caches)) for kv in "kv"]
    if any(n not in tensors or tuple(tensors[n].shape) != shape for n in names):
        log.warning("warm KV blocks in %s not loaded: tensors missing or of the wrong shape", src)
        return 0
    if not core.kv.enable_prefix_caching:
        return 0
    sources: list[int] = []
    targets: list[int] = []
    row = 0
    for chain in meta["prompts"]:
        parent: int | None = None
        for tokens_list in chain:
            tokens = tuple(tokens_list)
            parent = hash_block(parent, tokens)
            block = core.kv.adopt(parent, tokens)
            if block is not None:
                sources.append(row)
                targets.append(block.block_id)
            row += 1
    if targets:
        src_idx = torch.tensor(sources, dtype=torch.int64)
        dst_idx = torch.tensor(targets, dtype=torch.int64, device=core.device)
        for layer, (k, v) in enumerate(core.kv_caches):
            copy_rows(k, dst_idx, tensors[f"k.{layer}"][src_idx].to(core.device))
            copy_rows(v, dst_idx, tensors[f"v.{layer}"][src_idx].to(core.device))
    log.info("warm KV: %d prefix blocks loaded from %s", len(targets), src)
    return len(targets)


def read_prompts(path: Path) -> list[dict[str, Any]]:
    """Warm prompts, one JSON object a line: {"messages": [...]} (rendered with the chat
    template, no generation prompt: a system prompt shared by many requests) or {"prompt": "..."}
    (raw text, as /v1/completions sends it)."""
    prompts: list[dict[str, Any]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise ModelLoadError(f"{path}:{n}: not JSON ({exc}); write one object a line") from exc
        if not isinstance(item, dict) or not ("messages" in item or "prompt" in item):
            raise ModelLoadError(
                f'{path}:{n}: expected {{"messages": [...]}} or {{"prompt": "..."}}'
            )
        prompts.append(item)
    return prompts


def warm(
    model_dir: Path,
    prompts_file: Path,
    out: Path | None,
    device: str,
    block_size: int,
    kv_cache_dtype: str = "auto",
) -> int:
    """`ember warm`: compute and save the warm KV blocks of the prompts for this model, in the
    dtype it will be served with on a GPU (and the server's --kv-cache-dtype). Returns the
    number of blocks saved."""
    from ember.engine.args import EngineArgs
    from ember.engine.core import EngineCore
    from ember.models.config import ModelConfig
    from ember.models.loader import resolve_dtype
    from ember.tokenizer import Tokenizer

    dtype = resolve_dtype("auto", ModelConfig.from_dir(model_dir), torch.device("cuda"))
    tok = Tokenizer.from_dir(model_dir)
    token_lists = []
    for item in read_prompts(prompts_file):
        if "messages" in item:
            text = tok.apply_chat_template(item["messages"], add_generation_prompt=False)
            token_lists.append(tok.encode(text, add_special_tokens=False))
        else:
            token_lists.append(tok.encode(str(item["prompt"]), add_special_tokens=True))
    args = EngineArgs(
        model=str(model_dir),
        dtype=str(dtype).removeprefix("torch."),
        device=device,
        block_size=block_size,
        kv_cache_dtype=kv_cache_dtype,
        max_num_seqs=1,
        max_model_len=max(len(t) for t in token_lists) + 1 if token_lists else None,
        enforce_eager=True,
    )
    core = EngineCore(args)
    return export_warm_kv(core, token_lists, out or model_dir / WARM_DIR)
