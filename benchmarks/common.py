"""Shared pieces of the GPU benchmarks: model shapes, dummy model directories, measured limits."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ember.engine.core import EngineCore

LLAMA_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 128000,
    "eos_token_id": 128001,
}

QWEN25_05B: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}

SHAPES = {"llama-3.1-8b": LLAMA_8B, "qwen2.5-0.5b": QWEN25_05B}


def dummy_model_dir(shape: str, root: Path) -> Path:
    """A model directory with the shape's config.json and a word-level tokenizer covering its
    whole vocabulary (token i decodes to "w{i}"), so every generated token has text to stream.
    Weights come from `load_format="dummy"`."""
    config = SHAPES[shape]
    out = root / shape
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config))
    write_word_tokenizer(out, config["vocab_size"], config["bos_token_id"], config["eos_token_id"])
    return out


def write_word_tokenizer(out: Path, vocab_size: int, bos_id: int, eos_id: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = {bos_id: "<|begin_of_text|>", eos_id: "<|end_of_text|>"}
    vocab = {specials.get(i, f"w{i}"): i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(specials.values()))
    tok.save(str(out / "tokenizer.json"))
    template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant {% endif %}"
    )
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": specials[bos_id],
                "eos_token": specials[eos_id],
                "chat_template": template,
            }
        )
    )
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_id}))


def _layer_dims(config: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """(hidden, layers, query heads, KV heads, head_dim) of a shape."""
    h, heads = config["hidden_size"], config["num_attention_heads"]
    d = config.get("head_dim", h // heads)
    return h, config["num_hidden_layers"], heads, config["num_key_value_heads"], d


def _layer_matmul_params(config: dict[str, Any]) -> int:
    """Parameters of one decoder layer's projections (q, k, v, o, gate, up, down)."""
    h, _, heads, kv, d = _layer_dims(config)
    return h * d * (heads + 2 * kv) + heads * d * h + 3 * h * config["intermediate_size"]


def param_bytes(config: dict[str, Any], elem: int = 2) -> int:
    h, n = config["hidden_size"], config["num_hidden_layers"]
    per_layer = _layer_matmul_params(config) + 2 * h  # + the two norms
    embed = config["vocab_size"] * h * (1 if config["tie_word_embeddings"] else 2)
    return (n * per_layer + embed + h) * elem


def env_spec(spec: str) -> dict[str, str]:
    """The variables of a benchmark's environment setting, "VAR=VALUE VAR2=VALUE2" ("base" or
    "": none), for the processes it starts."""
    return dict(kv.split("=", 1) for kv in spec.split() if kv != "base")


def prefill_flops_per_token(config: dict[str, Any], context: int) -> float:
    """Matmul FLOPs of one prompt token: the layers' weights (2 per parameter) and causal
    attention at a prompt of `context` tokens (QK^T and PV over context/2 keys on average);
    the LM head runs for the last token only and is left out."""
    _, n, heads, _, d = _layer_dims(config)
    attention = 4 * heads * d * (context / 2)
    return float(n * (2 * _layer_matmul_params(config) + attention))


@dataclass(frozen=True, slots=True)
class WorkloadBound:
    """Lower bounds on the GPU time of `batch` requests that start together, each `input_len`
    prompt tokens then `output_len` generated ones (the first by the prefill, the rest by
    `output_len - 1` decode steps), from the GEMM peak and HBM copy rate of the same run."""

    compute_s: float  # every FLOP at the GEMM peak, all memory traffic hidden beneath it
    roofline_s: float  # the prefill at the peak, then each decode step at max(FLOPs, bytes)
    serial_s: float  # the same, with each step's KV reads after its matmuls (as engines run)


def workload_bound(
    config: dict[str, Any],
    batch: int,
    input_len: int,
    output_len: int,
    gemm_tflops: float,
    hbm_gbs: float,
    kv_elem: int = 2,
) -> WorkloadBound:
    h, n, heads, kv, d = _layer_dims(config)
    weights = _layer_matmul_params(config)
    lm_head = 2 * config["vocab_size"] * h  # FLOPs of one row's logits
    flops_s, bytes_s = 1 / (gemm_tflops * 1e12), 1 / (hbm_gbs * 1e9)
    prefill = batch * (input_len * prefill_flops_per_token(config, input_len) + lm_head)
    matmul = batch * (2 * n * weights + lm_head) * flops_s  # each decode step's
    weight_read = 2 * (n * weights + config["vocab_size"] * h) * bytes_s
    compute, roofline, serial = prefill * flops_s, prefill * flops_s, prefill * flops_s
    for ctx in range(input_len + 1, input_len + output_len):  # the keys each decode step reads
        attention = batch * n * 4 * heads * d * ctx * flops_s
        kv_read = batch * ctx * n * 2 * kv * d * kv_elem * bytes_s
        compute += matmul + attention
        roofline += max(matmul + attention, weight_read + kv_read)
        serial += max(matmul, weight_read) + kv_read
    return WorkloadBound(compute, roofline, serial)


def launched_ahead(core: EngineCore) -> int:
    """Steps the engine has launched before the previous step's tokens were read (async
    scheduling's count; 0 without it): read before and after a run, the difference says how
    many of its steps overlapped the host's work."""
    return core.pipeline.launched_ahead if core.pipeline is not None else 0


def gemm_peak_tflops(device: torch.device, m: int = 8192, k: int = 4096, n: int = 14336) -> float:
    """bf16 matmul TFLOP/s on a prefill-sized GEMM (a Llama-8B MLP projection), best of 10:
    the compute ceiling measured in the same run."""
    a = torch.randn(m, k, device=device, dtype=torch.bfloat16)
    b = torch.randn(k, n, device=device, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(12):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(5):
            torch.mm(a, b)
        torch.cuda.synchronize(device)
        best = min(best, (time.perf_counter() - t0) / 5)
    del a, b
    return 2 * m * k * n / best / 1e12


def hbm_bandwidth_gbs(device: torch.device, nbytes: int = 4 << 30) -> float:
    """Device-to-device copy: bytes read + bytes written per second, best of 10."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(10):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    del src, dst
    return nbytes / best / 1e9


def random_prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1000, vocab, (n, length), generator=g).tolist()
