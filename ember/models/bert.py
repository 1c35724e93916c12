"""BERT-family encoders for embeddings (all-MiniLM-L6-v2, bge, e5, nomic-bert-free BERTs):
the Hugging Face BertModel computation, then the pooling and normalisation that the model's
sentence-transformers files ask for (mean pooling + L2 normalisation by default).

Runs whole padded batches without a KV cache: embeddings are one forward pass per input.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ember.errors import ModelLoadError


@dataclass(slots=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    # sentence-transformers' choices (sentence_bert_config.json, 1_Pooling/config.json, modules.json)
    max_seq_length: int = 512
    pooling: str = "mean"  # "mean" | "cls"
    normalize: bool = True

    @classmethod
    def from_dir(cls, path: Path) -> BertConfig:
        raw = json.loads((path / "config.json").read_text())
        if raw.get("model_type") != "bert":
            raise ModelLoadError(
                f"{path} is not a BERT model (model_type {raw.get('model_type')!r})"
            )
        cfg = cls(
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=raw["num_attention_heads"],
            intermediate_size=raw["intermediate_size"],
            max_position_embeddings=raw["max_position_embeddings"],
            type_vocab_size=raw.get("type_vocab_size", 2),
            layer_norm_eps=raw.get("layer_norm_eps", 1e-12),
            hidden_act=raw.get("hidden_act", "gelu"),
            pad_token_id=raw.get("pad_token_id", 0) or 0,
            max_seq_length=raw["max_position_embeddings"],
        )
        st = path / "sentence_bert_config.json"
        if st.is_file():
            cfg.max_seq_length = min(
                cfg.max_seq_length, json.loads(st.read_text())["max_seq_length"]
            )
        pooling = path / "1_Pooling" / "config.json"
        if pooling.is_file() and json.loads(pooling.read_text()).get("pooling_mode_cls_token"):
            cfg.pooling = "cls"
        modules = path / "modules.json"
        if modules.is_file():
            types = [m.get("type", "") for m in json.loads(modules.read_text())]
            cfg.normalize = any(t.endswith("Normalize") for t in types)
        return cfg


def is_bert_dir(path: Path) -> bool:
    try:
        return json.loads((path / "config.json").read_text()).get("model_type") == "bert"
    except (OSError, ValueError):
        return False


class _Layer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.attn_out = nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.up = nn.Linear(h, cfg.intermediate_size)
        self.down = nn.Linear(cfg.intermediate_size, h)
        self.out_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.exact_gelu = cfg.hidden_act == "gelu"

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        d = h // self.heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1 / math.sqrt(d))
        x = self.attn_norm(x + self.attn_out(attn.transpose(1, 2).reshape(b, t, h)))
        up = F.gelu(self.up(x), approximate="none" if self.exact_gelu else "tanh")
        return self.out_norm(x + self.down(up))


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.word = nn.Embedding(cfg.vocab_size, h)
        self.position = nn.Embedding(cfg.max_position_embeddings, h)
        self.token_type = nn.Embedding(cfg.type_vocab_size, h)
        self.emb_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states [batch, tokens, hidden]; `mask` is 1 on real tokens, 0 on padding."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.position(positions) + self.token_type.weight[0]
        x = self.emb_norm(x)
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device)
        bias = bias.masked_fill(mask == 0, float("-inf"))[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        return x

    @torch.inference_mode()
    def embed(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled (and, as configured, L2-normalised) embeddings [batch, hidden]."""
        hidden = self(input_ids, mask)
        if self.cfg.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=-1) if self.cfg.normalize else pooled


# Hugging Face names (after an optional "bert." prefix) -> ours.
_RENAMES = (
    ("embeddings.word_embeddings.", "word."),
    ("embeddings.position_embeddings.", "position."),
    ("embeddings.token_type_embeddings.", "token_type."),
    ("embeddings.LayerNorm.", "emb_norm."),
    ("encoder.layer.", "layers."),
    (".attention.self.query.", ".query."),
    (".attention.self.key.", ".key."),
    (".attention.self.value.", ".value."),
    (".attention.output.dense.", ".attn_out."),
    (".attention.output.LayerNorm.", ".attn_norm."),
    (".intermediate.dense.", ".up."),
    (".output.dense.", ".down."),
    (".output.LayerNorm.", ".out_norm."),
)


def load_bert(path: str | Path, device: str | torch.device = "cpu") -> BertEncoder:
    path = Path(path)
    cfg = BertConfig.from_dir(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path} has no .safetensors weights")
    model = BertEncoder(cfg)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        for name, tensor in load_file(str(file)).items():
            name = name.removeprefix("bert.")
            if name.startswith(("pooler.", "cls.")) or name.endswith("position_ids"):
                continue
            for theirs, ours in _RENAMES:
                name = name.replace(theirs, ours)
            state[name] = tensor
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(
            f"{path}: weights do not match BERT: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    return model.to(device).eval()
