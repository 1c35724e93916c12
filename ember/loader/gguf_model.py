"""A GGUF file (llama.cpp's format, what Ollama stores) as ember's models read a checkpoint:
a Hugging Face config.json dict from the metadata, and (HF tensor name, tensor) pairs with every
tensor's raw bytes copied to the target device once and dequantized there (gguf_dequant.py: F32,
F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K in torch; other types through the `gguf` package).

llama.cpp's converter changes some tensors on the way in, and this undoes it:
- `llama` architecture: q/k projection rows are permuted for its interleaved rope; ember (like
  HF) rotates halves, so the rows are permuted back.
- Gemma 2/3: norm weights are stored as 1 + weight (llama.cpp has no (1 + weight) norm); 1 is
  taken off again.
Names are mapped with gguf's own HF <-> GGUF tensor-name tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from ember.errors import ModelLoadError
from ember.loader.gguf_dequant import dequantize_blocks

# GGUF general.architecture -> (HF architecture, HF model_type, gguf's MODEL_ARCH).
_ARCHS: dict[str, tuple[str, str, gguf.MODEL_ARCH]] = {
    "llama": ("LlamaForCausalLM", "llama", gguf.MODEL_ARCH.LLAMA),
    "qwen2": ("Qwen2ForCausalLM", "qwen2", gguf.MODEL_ARCH.QWEN2),
    "qwen3": ("Qwen3ForCausalLM", "qwen3", gguf.MODEL_ARCH.QWEN3),
    "gemma2": ("Gemma2ForCausalLM", "gemma2", gguf.MODEL_ARCH.GEMMA2),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text", gguf.MODEL_ARCH.GEMMA3),
}
_GEMMA = frozenset({"gemma2", "gemma3"})
# Vision tower and projector tensors that Ollama keeps in the same file (Gemma 3): not served.
_VISION_PREFIXES = ("v.", "mm.")
# Llama 3.x rope scalings that llama.cpp stores only as a rope_freqs tensor; the one that
# reproduces the tensor is used. (factor, low_freq_factor, high_freq_factor, original context)
_LLAMA3_ROPES = ((8.0, 1.0, 4.0, 8192), (32.0, 1.0, 4.0, 8192), (16.0, 1.0, 4.0, 8192))
# llama.cpp YaRN keys (under rope.scaling.) that change its result beyond what transformers'
# YaRN computes, with the value at which they change nothing.
_YARN_NEUTRAL = {
    "yarn_ext_factor": 1.0,
    "yarn_attn_factor": 1.0,
    "yarn_log_multiplier": 0.0,
    "attn_factor": 1.0,
}


@dataclass(slots=True)
class GGUFModel:
    path: Path
    reader: gguf.GGUFReader
    arch: str  # general.architecture

    @classmethod
    def open(cls, path: str | Path) -> GGUFModel:
        try:
            reader = gguf.GGUFReader(str(path))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read GGUF file '{path}': {exc}") from exc
        arch = str(field_value(reader, "general.architecture", ""))
        if arch not in _ARCHS:
            raise ModelLoadError(
                f"GGUF architecture '{arch}' in '{path}' is not supported; supported: "
                f"{', '.join(_ARCHS)}"
            )
        return cls(Path(path), reader, arch)

    def meta(self, key: str, default: Any = None) -> Any:
        """general.* and tokenizer.* keys as they are; other keys under the architecture."""
        full = key if key.startswith(("general.", "tokenizer.")) else f"{self.arch}.{key}"
        return field_value(self.reader, full, default)

    def tensor_names(self) -> list[str]:
        return [t.name for t in self.reader.tensors]

    def hf_config(self) -> dict[str, Any]:
        """The config.json of the model, as transformers would write it."""
        architecture, model_type, _ = _ARCHS[self.arch]
        hidden = int(self.meta("embedding_length"))
        heads = int(self.meta("attention.head_count"))
        layers = int(self.meta("block_count"))
        head_dim = int(self.meta("attention.key_length", hidden // heads))
        embed = next((t for t in self.reader.tensors if t.name == "token_embd.weight"), None)
        # The embedding's rows are the vocabulary (GGUF lists dims innermost first).
        vocab = int(embed.shape[1]) if embed is not None else self.meta("vocab_size")
        raw: dict[str, Any] = {
            "architectures": [architecture],
            "model_type": model_type,
            "hidden_size": hidden,
            "intermediate_size": int(self.meta("feed_forward_length")),
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": int(self.meta("attention.head_count_kv", heads)),
            "head_dim": head_dim,
            "vocab_size": int(vocab),
            "max_position_embeddings": int(self.meta("context_length", 2048)),
            "rms_norm_eps": float(self.meta("attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": float(
                self.meta("rope.freq_base")
                or self.meta("rope.global.freq_base")  # Ollama's own Gemma 3 converter
                or (1e6 if self.arch == "gemma3" else 10000.0)
            ),
            "tie_word_embeddings": "output.weight" not in self.tensor_names(),
            "bos_token_id": self.meta("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self.meta("tokenizer.ggml.eos_token_id"),
        }
        scaling = self._rope_scaling(raw["rope_theta"], head_dim)
        if scaling is not None:
            raw["rope_scaling"] = scaling
        window = self.meta("attention.sliding_window")
        if window is not None:
            raw["sliding_window"] = int(window)
        if self.arch in _GEMMA:
            raw.update(self._gemma_extras(hidden, heads, head_dim, layers))
        return raw

    def _gemma_extras(self, hidden: int, heads: int, head_dim: int, layers: int) -> dict[str, Any]:
        # llama.cpp keeps no query_pre_attn_scalar: like it, use hidden / heads for the 27B
        # models (46 layers in Gemma 2, 62 in Gemma 3) and head_dim otherwise.
        big = layers == (46 if self.arch == "gemma2" else 62)
        extras: dict[str, Any] = {"query_pre_attn_scalar": hidden // heads if big else head_dim}
        if self.arch == "gemma2":
            extras["attn_logit_softcapping"] = self.meta("attn_logit_softcapping", 50.0)
            extras["final_logit_softcapping"] = self.meta("final_logit_softcapping", 30.0)
        else:
            # The global base is rope.freq_base; older files leave out the local one, which
            # llama.cpp then fixes at 10000.
            local = self.meta("rope.freq_base_swa") or self.meta("rope.local.freq_base")
            extras["rope_local_base_freq"] = float(local or 10000.0)
            pattern = self.meta("attention.sliding_window_pattern", 6)
            if isinstance(pattern, list):  # one flag per layer: true where it slides
                extras["layer_types"] = [
                    "sliding_attention" if flag else "full_attention" for flag in pattern
                ]
            else:
                extras["sliding_window_pattern"] = int(pattern)
        return extras

    def _rope_scaling(self, base: float, head_dim: int) -> dict[str, Any] | None:
        kind = self.meta("rope.scaling.type")
        if kind == "linear":
            return {"rope_type": "linear", "factor": float(self.meta("rope.scaling.factor"))}
        if kind == "yarn":
            return self._yarn_scaling()
        freq_scale = self.meta("rope.freq_scale")  # Ollama's converters: 1 / linear factor
        if kind is None and freq_scale not in (None, 1.0):
            return {"rope_type": "linear", "factor": 1.0 / float(freq_scale)}
        if kind not in (None, "none"):
            raise ModelLoadError(
                f"GGUF rope scaling '{kind}' in '{self.path}' is not supported; supported: "
                "none, linear, yarn (and Llama 3's, stored as a rope_freqs tensor)"
            )
        freqs = next((t for t in self.reader.tensors if t.name == "rope_freqs.weight"), None)
        if freqs is None:
            return None
        want = torch.from_numpy(np.asarray(freqs.data, dtype=np.float32).copy())
        from ember.layers.rope_scaling import rope_inv_freq

        plain = rope_inv_freq(head_dim, base, None)
        for factor, low, high, old_len in _LLAMA3_ROPES:
            scaling = {
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": old_len,
            }
            got = plain / rope_inv_freq(head_dim, base, scaling)
            if got.shape == want.shape and torch.allclose(got, want, rtol=1e-3):
                return scaling
        raise ModelLoadError(
            f"'{self.path}' holds rope frequency factors that match no known Llama 3 scaling"
        )

    def _yarn_scaling(self) -> dict[str, Any]:
        """llama.cpp's YaRN keys as transformers' rope_scaling. convert_hf_to_gguf.py writes the
        factor and original_context_length, and beta_fast / beta_slow where the HF config had
        them; a missing original context is max_position_embeddings in both (config.py).
        Keys that llama.cpp would apply beyond HF's YaRN are refused unless at their defaults."""
        factor = self.meta("rope.scaling.factor")
        if not isinstance(factor, int | float) or factor <= 0:
            raise ModelLoadError(
                f"GGUF YaRN rope scaling in '{self.path}' needs a positive "
                f"{self.arch}.rope.scaling.factor, got {factor!r}"
            )
        scaling: dict[str, Any] = {"rope_type": "yarn", "factor": float(factor)}
        original = self.meta("rope.scaling.original_context_length")
        if original is not None:
            scaling["original_max_position_embeddings"] = int(original)
        for key, hf_key in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            value = self.meta(f"rope.scaling.{key}")
            if value is not None:
                scaling[hf_key] = float(value)
        for key, neutral in _YARN_NEUTRAL.items():
            value = self.meta(f"rope.scaling.{key}")
            if value is not None and value != neutral:
                raise ModelLoadError(
                    f"GGUF key {self.arch}.rope.scaling.{key} = {value} in '{self.path}' is not "
                    f"supported (only {neutral}); load the model's safetensors checkpoint instead"
                )
        return scaling

    def tensors(
        self,
        hf_names: list[str],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, tensor in dtype on device) for each tensor of the file, dequantized on
        device; hf_names are the checkpoint names the model expects (used to map GGUF names
        back)."""
        device = torch.device(device)
        _, _, model_arch = _ARCHS[self.arch]
        layers = int(self.meta("block_count"))
        name_map = gguf.get_tensor_name_map(model_arch, layers)
        to_hf: dict[str, str] = {}
        for hf in hf_names:
            gguf_name = name_map.get_name(hf, try_suffixes=(".weight", ".bias"))
            if gguf_name is not None:
                to_hf[gguf_name] = hf
        heads = int(self.meta("attention.head_count"))
        kv_heads = int(self.meta("attention.head_count_kv", heads))
        for t in self.reader.tensors:
            if t.name == "rope_freqs.weight" or t.name.startswith(_VISION_PREFIXES):
                continue
            hf_name = to_hf.get(t.name)
            if hf_name is None:
                raise ModelLoadError(
                    f"GGUF tensor '{t.name}' in '{self.path}' has no place in "
                    f"{_ARCHS[self.arch][0]}"
                )
            # 1 + weight is taken back to weight in float32: in bf16 the sum lost the low bits.
            offset_norm = self.arch in _GEMMA and t.name.endswith("norm.weight")
            tensor = dequantize(t, device, torch.float32 if offset_norm else dtype)
            if self.arch == "llama" and t.name.endswith(("attn_q.weight", "attn_k.weight")):
                tensor = _unpermute(tensor, heads if "attn_q" in t.name else kv_heads)
            if offset_norm:
                tensor = (tensor - 1.0).to(dtype)
            yield hf_name, tensor


def dequantize(
    t: gguf.ReaderTensor,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A GGUF tensor in dtype on device, in the row-major shape HF uses (GGUF lists dims
    reversed). Its bytes cross to the device once; the values are computed there."""
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    raw = _raw_bytes(t.data, torch.device(device))
    try:
        return dequantize_blocks(raw, t.tensor_type, shape, dtype)
    except NotImplementedError as exc:
        raise ModelLoadError(
            f"GGUF tensor '{t.name}' is {t.tensor_type.name}, which cannot be dequantized: {exc}"
        ) from exc
    except ValueError as exc:
        raise ModelLoadError(f"GGUF tensor '{t.name}' is damaged: {exc}") from exc


def _raw_bytes(data: np.ndarray, device: torch.device) -> torch.Tensor:
    """The bytes of `data` (a read-only view of the file) as a uint8 tensor of our own on
    device: staged through pinned memory for CUDA, so the copy to the GPU is one DMA."""
    array = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if device.type != "cuda":
        return torch.from_numpy(array.copy()).to(device)
    staging = torch.empty(array.size, dtype=torch.uint8, pin_memory=True)
    staging.numpy()[:] = array
    # Safe to drop staging after this: the caching host allocator keeps the block until the
    # copy, queued on the current stream before the dequantization that reads it, is done.
    return staging.to(device, non_blocking=True)


def _unpermute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    # llama.cpp: w.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2); this inverts it.
    rows = weight.shape[0]
    return (
        weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
        .transpose(1, 2)
        .reshape(weight.shape)
    )


def field_value(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.get_field(key)
    if field is None:
        return default
    value = field.contents()
    if isinstance(value, float) and math.isnan(value):
        return default
    return value
