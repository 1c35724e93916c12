"""Test helpers: tiny Hugging Face models on disk, and a minimal paged KV cache that builds
AttentionMetadata by hand the way the engine does (non-contiguous blocks on purpose)."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import nn

from ember.layers.metadata import AttentionMetadata, KVCache
from ember.models.config import ModelConfig

# The sizes of the tiny Llama that the loader and build tests construct.
TINY_LLAMA: dict[str, int] = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 64,
    "max_position_embeddings": 32,
}


# The sizes of the transformers models the parity tests compare against (Llama, Qwen, Mistral
# shapes; FP8 checkpoints are made from them too).
PARITY_SHAPE: dict[str, int | float] = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5,
}


def gemma3_multimodal(text: dict[str, object]) -> nn.Module:
    """Gemma 3's image-text model (the class of gemma-3-4b and up) around a text model of
    `text`'s config (its vocabulary 260: the image tokens are 257-259), with a one-layer vision
    tower ember drops at load."""
    import transformers

    cfg = transformers.Gemma3Config(
        text_config=text,
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 24,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 28,
            "patch_size": 14,
        },
        mm_tokens_per_image=4,
        boi_token_index=257,
        eoi_token_index=258,
        image_token_index=259,
    )
    return transformers.Gemma3ForConditionalGeneration(cfg)


def randomize_(model: nn.Module, seed: int) -> None:
    """Give every parameter random values (norm weights around 1), so that a mapping mistake in
    any tensor (biases and norms included) shows in the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if "norm" in name:
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.copy_(0.15 * noise)


class PagedCache:
    """Per-layer KV caches plus a block table per sequence, blocks drawn from a shuffled pool."""

    def __init__(
        self,
        config: ModelConfig,
        num_blocks: int = 64,
        block_size: int = 4,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> None:
        shape = (num_blocks, block_size, config.num_key_value_heads, config.head_dim)
        self.kv_caches: list[KVCache] = [
            (torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))
            for _ in range(config.num_hidden_layers)
        ]
        self.block_size = block_size
        self.free = list(range(num_blocks))
        random.Random(seed).shuffle(self.free)
        self.blocks: dict[int, list[int]] = {}
        self.lens: dict[int, int] = {}

    def step(
        self, chunks: list[tuple[int, list[int]]]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """Schedule `tokens` for each (seq_id, tokens); returns input_ids, positions, metadata."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts = [0]
        seq_lens: list[int] = []
        for seq_id, tokens in chunks:
            first = self.lens.get(seq_id, 0)
            end = first + len(tokens)
            blocks = self.blocks.setdefault(seq_id, [])
            while len(blocks) * bs < end:
                blocks.append(self.free.pop())
            self.lens[seq_id] = end
            input_ids += tokens
            positions += range(first, end)
            slots += [blocks[p // bs] * bs + p % bs for p in range(first, end)]
            starts.append(starts[-1] + len(tokens))
            seq_lens.append(end)
        width = max(len(self.blocks[s]) for s, _ in chunks)
        table = [self.blocks[s] + [0] * (width - len(self.blocks[s])) for s, _ in chunks]
        meta = AttentionMetadata(
            query_start_loc=torch.tensor(starts, dtype=torch.int32),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            block_tables=torch.tensor(table, dtype=torch.int32),
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            max_query_len=max(len(t) for _, t in chunks),
            max_seq_len=max(seq_lens),
            query_start_loc_cpu=starts,
            seq_lens_cpu=seq_lens,
        )
        return (
            torch.tensor(input_ids, dtype=torch.int64),
            torch.tensor(positions, dtype=torch.int64),
            meta,
        )


def save_tiny_hf_model(hf_model: nn.Module, path: Path, max_shard_size: str | None = None) -> None:
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    hf_model.save_pretrained(str(path), **kwargs)  # type: ignore[operator]
