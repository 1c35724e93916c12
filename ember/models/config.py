"""The one description of a model's architecture, read from a Hugging Face `config.json`.

Both config generations are accepted: transformers 4 writes `rope_theta` and `rope_scaling`
(with `rope_type`, or `type` in older files); transformers 5 writes one `rope_parameters` dict that
holds `rope_theta` and `rope_type` together (for Gemma 3, one such dict per layer type). Either way
`rope_scaling` here is None for plain RoPE, or the scaling parameters with a `rope_type` key.

Multimodal checkpoints (Gemma3ForConditionalGeneration) nest the language model's config under
`text_config`; only that part is read. Gemma configs on the Hub leave out most keys and rely on
transformers' per-model defaults, which `_MODEL_DEFAULTS` restates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ember.errors import ModelLoadError
from ember.models.quant import Fp8Format, read_quantization

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"

# Qwen2 puts a bias on q/k/v (not on o_proj) and its config.json has no key that says so.
_QKV_BIAS_MODEL_TYPES = frozenset({"qwen2"})


@dataclass(slots=True)
class ModelConfig:
    architectures: list[str]
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q/k/v projections
    attention_out_bias: bool = False  # bias on o_proj (Llama's attention_bias covers both)
    mlp_bias: bool = False
    hidden_act: str = "silu"
    sliding_window: int | None = None  # tokens a query sees, itself included (HF semantics)
    # One entry per layer: FULL_ATTENTION or SLIDING_ATTENTION.
    layer_types: list[str] = field(default_factory=list)
    dtype: str | None = None  # the checkpoint's dtype name, e.g. "bfloat16"
    # Gemma: attention scale is query_pre_attn_scalar ** -0.5 (head_dim ** -0.5 when None);
    # tanh softcaps on attention scores and final logits (None: off).
    query_pre_attn_scalar: float | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    # Gemma 3: rope base of the sliding-window layers, which use no rope scaling; None means
    # every layer uses rope_theta and rope_scaling.
    rope_local_theta: float | None = None
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    # FP8 weights, dequantized at load (models/fp8.py); None: unquantized. Any other
    # quantization is refused when the config is read.
    quantization: Fp8Format | None = None

    @property
    def architecture(self) -> str:
        return self.architectures[0] if self.architectures else ""

    @property
    def max_context_len(self) -> int:
        """The longest sequence (prompt and output, in tokens) the model serves, derived as vLLM
        derives its default max_model_len: max_position_embeddings times the rope scaling
        factor, except that YaRN scales original_max_position_embeddings instead and that
        llama3 rope and Gemma 3 already state the extended length in max_position_embeddings.
        (Qwen2.5 and Qwen3 keep max_position_embeddings at 32768 / 40960 when YaRN is enabled
        with factor 4 over 32768: 131072 tokens.)"""
        scaling = self.rope_scaling
        if scaling is None or "gemma3" in self.model_type:
            return self.max_position_embeddings
        rope_type = scaling.get("rope_type")
        if rope_type == "yarn":
            return int(scaling["original_max_position_embeddings"] * scaling["factor"])
        if rope_type == "linear":
            return int(self.max_position_embeddings * scaling["factor"])
        return self.max_position_embeddings  # llama3 (and the types no model is built for)

    def layer_sliding_window(self, layer: int) -> int | None:
        """The sliding window of one layer, or None where the layer attends to everything."""
        if self.sliding_window is None or self.layer_types[layer] != SLIDING_ATTENTION:
            return None
        return self.sliding_window

    def memory_sample_layers(self) -> list[int]:
        """Layers whose forward pass allocates as much as any other's: the first two (the first
        starts the residual stream, the second runs as every later one) and the first of each
        attention kind. A forward pass through these has the whole stack's memory peak."""
        keep = {0, 1}
        kinds: set[str] = set()
        for i, kind in enumerate(self.layer_types):
            if kind not in kinds:
                kinds.add(kind)
                keep.add(i)
        return sorted(i for i in keep if i < self.num_hidden_layers)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> ModelConfig:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise ModelLoadError(
                f"no config.json in '{model_dir}'; a model directory needs the Hugging Face "
                "config.json next to its *.safetensors files"
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"cannot read '{path}': {exc}") from exc
        if not isinstance(raw, dict):
            raise ModelLoadError(f"'{path}' does not hold a JSON object")
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
        try:
            return _parse(raw)
        except (KeyError, TypeError, ValueError) as exc:
            what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ModelLoadError(f"invalid model config '{source}': {what}") from exc


def served_context_length(model_dir: str | Path) -> int:
    """The longest context a model folder is served with (ModelConfig.max_context_len), for
    `ember show` and /api/show; the config's max_position_embeddings where ember cannot build
    the model, and 0 where it says nothing."""
    try:
        return ModelConfig.from_dir(model_dir).max_context_len
    except ModelLoadError:
        pass
    try:
        raw = json.loads((Path(model_dir) / "config.json").read_text())
        value = {**raw, **(raw.get("text_config") or {})}.get("max_position_embeddings")
    except (OSError, ValueError, AttributeError, TypeError):
        return 0
    return value if isinstance(value, int) else 0


# transformers' defaults for keys that Gemma configs on the Hub leave out.
_GEMMA_COMMON: dict[str, Any] = {
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "eos_token_id": 1,
    "bos_token_id": 2,
}
_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma2": {
        **_GEMMA_COMMON,
        "vocab_size": 256000,
        "max_position_embeddings": 8192,
        "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": 50.0,
    },
    "gemma3_text": {
        **_GEMMA_COMMON,
        "vocab_size": 262208,
        "max_position_embeddings": 131072,
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
    },
}
# Keys of a multimodal config's top level that hold for its text part too.
_INHERITED_KEYS = ("eos_token_id", "bos_token_id", "dtype", "torch_dtype")


def _text_part(raw: dict[str, Any]) -> dict[str, Any]:
    """The language model's config: `text_config` merged over what the top level says for it,
    with the model type's defaults under both."""
    text = raw.get("text_config")
    if isinstance(text, dict):
        merged = dict(text)
        merged["architectures"] = raw.get("architectures") or []
        for key in _INHERITED_KEYS:
            if key in raw:
                merged[key] = raw[key]
        if "model_type" not in merged and raw.get("model_type") == "gemma3":
            merged["model_type"] = "gemma3_text"
        raw = merged
    defaults = _MODEL_DEFAULTS.get(str(raw.get("model_type", "")))
    if defaults is None:
        return raw
    return {**defaults, **raw}


def _parse(raw: dict[str, Any]) -> ModelConfig:
    quantization = read_quantization(raw)
    raw = _text_part(raw)
    architectures = raw.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise ValueError("'architectures' must be a list of class names")
    model_type = str(raw.get("model_type", ""))
    hidden_size = _int(raw, "hidden_size")
    num_heads = _int(raw, "num_attention_heads")
    num_layers = _int(raw, "num_hidden_layers")
    num_kv_heads = _int(raw, "num_key_value_heads", num_heads)
    head_dim = _int(raw, "head_dim", hidden_size // num_heads)
    if num_heads % num_kv_heads != 0:
        raise ValueError(
            f"num_attention_heads ({num_heads}) is not a multiple of "
            f"num_key_value_heads ({num_kv_heads})"
        )
    rope_theta, rope_scaling, rope_local_theta = _parse_rope(raw)
    qkv_bias = bool(raw.get("attention_bias", model_type in _QKV_BIAS_MODEL_TYPES))
    out_bias = bool(raw.get("attention_bias", False))
    sliding_window, layer_types = _parse_sliding(raw, num_layers)
    dtype = raw.get("dtype") or raw.get("torch_dtype")
    return ModelConfig(
        architectures=list(architectures),
        model_type=model_type,
        hidden_size=hidden_size,
        intermediate_size=_int(raw, "intermediate_size"),
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        vocab_size=_int(raw, "vocab_size"),
        max_position_embeddings=_int(raw, "max_position_embeddings", 2048),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=qkv_bias,
        attention_out_bias=out_bias,
        mlp_bias=bool(raw.get("mlp_bias", False)),
        # Gemma names its activation hidden_activation (and ignores hidden_act).
        hidden_act=str(raw.get("hidden_activation") or raw.get("hidden_act", "silu")),
        sliding_window=sliding_window,
        layer_types=layer_types,
        dtype=str(dtype) if dtype is not None else None,
        bos_token_id=_opt_int(raw.get("bos_token_id")),
        eos_token_ids=_int_list(raw.get("eos_token_id")),
        query_pre_attn_scalar=_opt_float(raw.get("query_pre_attn_scalar")),
        attn_logit_softcapping=_opt_float(raw.get("attn_logit_softcapping")),
        final_logit_softcapping=_opt_float(raw.get("final_logit_softcapping")),
        rope_local_theta=rope_local_theta,
        quantization=quantization,
    )


def _int(raw: dict[str, Any], key: str, default: int | None = None) -> int:
    value = raw.get(key)
    if value is None:
        if default is None:
            raise KeyError(key)
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"'{key}' must be a positive integer, got {value!r}")
    return value


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _opt_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _int_list(value: Any) -> list[int]:
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    single = _opt_int(value)
    return [] if single is None else [single]


def _parse_rope(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None, float | None]:
    """(rope_theta, rope_scaling, rope_local_theta) as ModelConfig holds them."""
    params = raw.get("rope_parameters")
    local_theta = raw.get("rope_local_base_freq")
    per_layer = isinstance(params, dict) and isinstance(params.get(FULL_ATTENTION), dict)
    if per_layer:
        # transformers 5, Gemma 3: one dict per layer type.
        assert isinstance(params, dict)
        local = params.get(SLIDING_ATTENTION)
        if isinstance(local, dict):
            local_theta = local.get("rope_theta", local_theta)
        params = params[FULL_ATTENTION]
    if isinstance(params, dict):
        scaling = dict(params)
        theta = scaling.pop("rope_theta", raw.get("rope_theta", 10000.0))
    else:
        theta = raw.get("rope_theta", 10000.0)
        legacy = raw.get("rope_scaling")
        scaling = dict(legacy) if isinstance(legacy, dict) else {}
    if "rope_type" not in scaling and "type" in scaling:
        scaling["rope_type"] = scaling.pop("type")
    scaling.pop("type", None)
    rope_type = scaling.get("rope_type", "default")
    local = None if local_theta is None else float(local_theta)
    if rope_type == "default":
        return float(theta), None, local
    if rope_type in ("llama3", "yarn"):
        _fill_original_len(scaling, raw, per_layer)
    if rope_type in ("linear", "llama3", "yarn"):
        _positive_number(scaling, "factor")
    if rope_type == "llama3":
        _positive_number(scaling, "low_freq_factor")
        _positive_number(scaling, "high_freq_factor")
    if rope_type == "yarn":
        # Optional; transformers reads null (and 0 for the betas) as "use the default".
        for key in ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
            if scaling.get(key) is not None:
                _positive_number(scaling, key, allow_zero=key != "attention_factor")
    return float(theta), scaling, local


def _fill_original_len(scaling: dict[str, Any], raw: dict[str, Any], per_layer: bool) -> None:
    """The pre-training context of a llama3 or YaRN rope, where transformers'
    standardize_rope_params finds it when it computes the rope: a top-level
    original_max_position_embeddings (Phi-3's place; not for per-layer-type ropes), else the
    rope dict's, else max_position_embeddings. A YaRN factor given as null is then
    max_position_embeddings over that length."""
    max_len = raw.get("max_position_embeddings", 2048)
    top = raw.get("original_max_position_embeddings")
    if top is not None and not per_layer:
        scaling["original_max_position_embeddings"] = top
    else:
        scaling.setdefault("original_max_position_embeddings", max_len)
    original = _positive_number(scaling, "original_max_position_embeddings")
    if scaling.get("rope_type") == "yarn" and "factor" in scaling and scaling["factor"] is None:
        scaling["factor"] = max_len / original


def _positive_number(scaling: dict[str, Any], key: str, allow_zero: bool = False) -> float:
    value = scaling.get(key)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        raise ValueError(
            f"rope scaling of type '{scaling.get('rope_type')}' needs a positive number "
            f"'{key}', got {value!r}"
        )
    return float(value)


def _parse_sliding(raw: dict[str, Any], num_layers: int) -> tuple[int | None, list[str]]:
    window = raw.get("sliding_window")
    # Qwen2/Qwen3 configs carry a sliding_window that is off unless use_sliding_window is true.
    if raw.get("use_sliding_window") is False:
        window = None
    if window is not None:
        window = _int(raw, "sliding_window")
    layer_types = raw.get("layer_types")
    if layer_types is None and window is not None:
        layer_types = _gemma_layer_types(raw, num_layers)
    if isinstance(layer_types, list) and len(layer_types) == num_layers:
        if window is None:
            return None, [FULL_ATTENTION] * num_layers
        return window, [str(t) for t in layer_types]
    if window is None:
        return None, [FULL_ATTENTION] * num_layers
    # Qwen's max_window_layers: layers below it use full attention.
    first_sliding = int(raw.get("max_window_layers", 0)) if "use_sliding_window" in raw else 0
    return window, [
        SLIDING_ATTENTION if i >= first_sliding else FULL_ATTENTION for i in range(num_layers)
    ]


def _gemma_layer_types(raw: dict[str, Any], num_layers: int) -> list[str] | None:
    """Gemma configs without layer_types: every `pattern`-th layer (1-based) is global, the rest
    slide; the pattern is 2 for Gemma 2 and sliding_window_pattern (6) for Gemma 3."""
    model_type = raw.get("model_type")
    if model_type == "gemma2":
        pattern = 2
    elif model_type == "gemma3_text":
        pattern = int(raw.get("sliding_window_pattern") or 6)
    else:
        return None
    return [
        FULL_ATTENTION if (i + 1) % pattern == 0 else SLIDING_ATTENTION for i in range(num_layers)
    ]
