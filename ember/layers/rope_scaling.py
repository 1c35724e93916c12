"""Rope frequencies for each supported `rope_type`, computed as transformers' modeling_rope_utils
computes them (same float32 operations in the same order, so the tables match bit for bit).

`scaling` is ModelConfig.rope_scaling: None for plain RoPE, or a dict with a `rope_type` key,
which config parsing has checked (numbers where numbers belong) and completed from the rest of
the config as transformers does (`original_max_position_embeddings`, a null YaRN factor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ember.errors import ModelLoadError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")

# Why each type users meet in real configs is refused: a reason names what would be needed.
_REFUSED = {
    # transformers recomputes the frequencies whenever a sequence grows past
    # max_position_embeddings (and so depends on the batch); vLLM instead fixes them at
    # max_position_embeddings * factor. Neither is a static table that matches transformers.
    "dynamic": "its frequencies change with the sequence length in transformers",
    "longrope": "Phi-3's LongRoPE is not implemented",
}


@dataclass(frozen=True, slots=True)
class RopeFrequencies:
    inv_freq: torch.Tensor  # [rotary_dim // 2] float32 on the CPU, radians per position
    attention_factor: float  # multiplies cos and sin (YaRN's mscale); 1.0 for the other types


def rope_frequencies(
    rotary_dim: int, base: float, scaling: dict[str, Any] | None
) -> RopeFrequencies:
    """Inverse frequencies and attention factor of one rope, for SUPPORTED_ROPE_TYPES."""
    rope_type = "default" if scaling is None else str(scaling.get("rope_type", "default"))
    if rope_type == "default" or scaling is None:
        return RopeFrequencies(_plain_inv_freq(rotary_dim, base), 1.0)
    if rope_type == "linear":
        factor = float(scaling["factor"])
        return RopeFrequencies(_plain_inv_freq(rotary_dim, base) / factor, 1.0)
    if rope_type == "llama3":
        return RopeFrequencies(_llama3_inv_freq(_plain_inv_freq(rotary_dim, base), scaling), 1.0)
    if rope_type == "yarn":
        return _yarn(rotary_dim, base, scaling)
    why = _REFUSED.get(rope_type)
    raise ModelLoadError(
        f"rope_type '{rope_type}' is not supported{f' ({why})' if why else ''}; "
        f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
    )


def rope_inv_freq(rotary_dim: int, base: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    """The inverse frequencies alone (rope_frequencies(...).inv_freq)."""
    return rope_frequencies(rotary_dim, base, scaling).inv_freq


def _plain_inv_freq(rotary_dim: int, base: float) -> torch.Tensor:
    return 1.0 / _wavelength_steps(rotary_dim, base)


def _wavelength_steps(rotary_dim: int, base: float) -> torch.Tensor:
    """base ** (2i / rotary_dim) for each rotation pair i: float32 on the CPU."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device="cpu").float() / rotary_dim
    return base**exponents


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    # Llama 3.1: long wavelengths are divided by `factor`, short ones kept, the band between
    # the two cut-offs is interpolated linearly in 1 / wavelength.
    factor = float(scaling["factor"])
    low = float(scaling["low_freq_factor"])
    high = float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen = old_len / low
    high_freq_wavelen = old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    in_band = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(in_band, smoothed, scaled)


def _yarn(rotary_dim: int, base: float, scaling: dict[str, Any]) -> RopeFrequencies:
    """YaRN (arXiv 2309.00071): pairs that turn fewer than beta_slow times over the original
    context are interpolated (divided by `factor`), pairs that turn more than beta_fast times
    are kept, and a linear ramp over pair index blends the band between; cos and sin are then
    scaled by the attention factor (0.1 ln(factor) + 1 unless the config gives one)."""
    factor = float(scaling["factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    # transformers treats a beta of 0 or null as unset (`or`), and so does this.
    beta_fast = float(scaling.get("beta_fast") or 32)
    beta_slow = float(scaling.get("beta_slow") or 1)
    truncate = scaling.get("truncate", True)

    def pair_at(turns: float) -> float:
        # The (fractional) pair index whose wavelength fits `turns` times into old_len.
        return rotary_dim * math.log(old_len / (turns * 2 * math.pi)) / (2 * math.log(base))

    low, high = pair_at(beta_fast), pair_at(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001  # a ramp of zero width would divide by zero
    ramp = (torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / (high - low)
    keep = 1 - ramp.clamp(0, 1)  # 1: extrapolate (unscaled), 0: interpolate (divided)
    steps = _wavelength_steps(rotary_dim, base)
    inv_freq = (1.0 / (factor * steps)) * (1 - keep) + (1.0 / steps) * keep
    return RopeFrequencies(inv_freq, _yarn_attention_factor(scaling, factor))


def _yarn_attention_factor(scaling: dict[str, Any], factor: float) -> float:
    given = scaling.get("attention_factor")
    if given is not None:
        return float(given)
    mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if mscale and mscale_all_dim:  # DeepSeek's form; transformers takes it only when both are set
        return _yarn_mscale(factor, float(mscale)) / _yarn_mscale(factor, float(mscale_all_dim))
    return _yarn_mscale(factor, 1.0)


def _yarn_mscale(factor: float, mscale: float) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0
