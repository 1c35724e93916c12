"""GGUF files written here with gguf's writer from tiny random transformers models, in each quant
type, turned into a model folder by ember and checked: tensors against gguf's own
dequantization, logits against transformers on the same (dequantized) weights, the tokenizer
against the original, and the chat template carried over."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import pytest
import torch
import transformers
from tokenizers import Tokenizer
from torch import nn

from ember.errors import ModelLoadError
from ember.layers.rope_scaling import rope_inv_freq
from ember.loader.gguf_convert import write_model_dir
from ember.models import load_model
from ember.registry import ModelStore, default_home
from tests.models.helpers import PagedCache, randomize_

from .gguf_writer import Q, tiny_vocab, write_gguf

COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 256,  # K-quants need rows of 256 values: down_proj has them
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 1000,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 995,
    "eos_token_id": 999,
}
LLAMA31: dict[str, Any] = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_theta": 500000.0,
}
TEMPLATE = "{% for m in messages %}<|start_header_id|>{{ m['content'] }}{% endfor %}"


def _llama() -> nn.Module:
    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**COMMON, rope_parameters=LLAMA31)
    )


def _qwen2() -> nn.Module:
    return transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(**COMMON, tie_word_embeddings=True)
    )


def _qwen2_yarn() -> nn.Module:
    # An original context shorter than the test prompt (24 tokens).
    rope = {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 16,
        "beta_fast": 16.0,
        "rope_theta": 1e6,
    }
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**COMMON, rope_parameters=rope))


def _gemma2() -> nn.Module:
    cfg = transformers.Gemma2Config(
        **COMMON,
        sliding_window=6,
        query_pre_attn_scalar=16,
        attn_logit_softcapping=5.0,
        final_logit_softcapping=10.0,
    )
    return transformers.Gemma2ForCausalLM(cfg)


def _gemma3() -> nn.Module:
    rope = {
        "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
    }
    cfg = transformers.Gemma3TextConfig(
        **{**COMMON, "num_hidden_layers": 7},  # llama.cpp's pattern: layer 5 is global
        sliding_window=6,
        query_pre_attn_scalar=16,
        rope_parameters=rope,
    )
    return transformers.Gemma3ForCausalLM(cfg)


# (model, quant types by tensor-name substring): each quant type appears at least once.
CASES: dict[str, tuple[Any, dict[str, Any]]] = {
    "llama-f16-q8_0-q4_k": (_llama, {"q_proj": Q.F16, "mlp.down": Q.Q4_K, "proj": Q.Q8_0}),
    "qwen2-bf16-q4_0-q6_k": (_qwen2, {"embed": Q.BF16, "mlp.down": Q.Q6_K, "proj": Q.Q4_0}),
    "qwen2-yarn-q6_k-q8_0": (_qwen2_yarn, {"mlp.down": Q.Q6_K, "proj": Q.Q8_0}),
    "gemma2-q5_k-q8_0": (_gemma2, {"mlp.down": Q.Q5_K, "proj": Q.Q8_0}),
    "gemma3-q4_k-f16": (_gemma3, {"mlp.down": Q.Q4_K, "proj": Q.F16}),
}


@pytest.fixture(scope="module")
def vocab() -> dict[str, Any]:
    tiny = ModelStore(default_home()).resolve("tiny").path
    return tiny_vocab(tiny / "tokenizer.json")


def _llama31_factors(head_dim: int) -> list[float]:
    plain = rope_inv_freq(head_dim, LLAMA31["rope_theta"], None)
    return (plain / rope_inv_freq(head_dim, LLAMA31["rope_theta"], LLAMA31)).tolist()


@pytest.fixture(scope="module", params=list(CASES))
def converted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, vocab: Any
) -> tuple[nn.Module, Path, Path]:
    make, qtypes = CASES[request.param]
    torch.manual_seed(0)
    hf = make().float().eval()
    randomize_(hf, seed=1)
    if hf.config.model_type.startswith("gemma"):
        with torch.no_grad():
            for name, param in hf.named_parameters():
                if "norm" in name:
                    param.sub_(1.0)
    tmp = tmp_path_factory.mktemp(request.param)
    freqs = _llama31_factors(16) if hf.config.model_type == "llama" else None
    write_gguf(hf, tmp / "model.gguf", vocab, qtypes, TEMPLATE, rope_freqs=freqs)
    out = write_model_dir(tmp / "model.gguf", tmp / "model", dtype=torch.float32)
    return hf, tmp / "model.gguf", out


def test_logits_match_transformers(converted: tuple[nn.Module, Path, Path]) -> None:
    hf, _, folder = converted
    model = load_model(folder, torch.float32, torch.device("cpu"))
    tokens = [(i * 37) % 990 + 1 for i in range(24)]
    cache = PagedCache(model.config, block_size=4)
    ids, positions, meta = cache.step([(0, tokens)])
    with torch.inference_mode():
        got = model.compute_logits(model(ids, positions, cache.kv_caches, meta))
        want = hf(torch.tensor([tokens])).logits[0].float()
    torch.testing.assert_close(got, want, atol=2e-4, rtol=0)


def test_tensors_are_gguf_dequantized(converted: tuple[nn.Module, Path, Path]) -> None:
    hf, path, folder = converted
    from safetensors.torch import load_file

    ours = load_file(str(folder / "model.safetensors"))
    reader = gguf.GGUFReader(str(path))
    down = next(t for t in reader.tensors if t.name == "blk.1.ffn_down.weight")
    assert down.tensor_type in (Q.Q4_K, Q.Q5_K, Q.Q6_K)
    want = gguf.quants.dequantize(down.data, down.tensor_type).reshape(64, 256)
    torch.testing.assert_close(ours["model.layers.1.mlp.down_proj.weight"], torch.from_numpy(want))
    for name, tensor in hf.state_dict().items():
        if name in ours:
            torch.testing.assert_close(ours[name], tensor, atol=0, rtol=0)


def test_tokenizer_and_template_carry_over(converted: tuple[nn.Module, Path, Path]) -> None:
    _, _, folder = converted
    tiny = ModelStore(default_home()).resolve("tiny").path
    ours = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ref = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    for text in ("Hello there, how are you?", "<|start_header_id|>ünï  123456\n\nok"):
        assert ours.encode(text).ids == ref.encode(text).ids
    import json

    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["chat_template"] == TEMPLATE
    assert config["bos_token"] == "<|begin_of_text|>"


def test_generation_stops_at_end_of_turn_tokens(converted: tuple[nn.Module, Path, Path]) -> None:
    """EOS and the vocabulary's end-of-turn tokens (<|eot_id|> here) all end generation, as
    llama.cpp stops at them: a chat would otherwise run on past its turn."""
    import json

    _, _, folder = converted
    tokens = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    stops = json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
    assert tokens["<|eot_id|>"] in stops and len(stops) >= 1


def test_unsupported_architecture_is_a_clear_error(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "mamba")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match="GGUF architecture 'mamba'"):
        write_model_dir(tmp_path / "x.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sentencepiece_vocab_encodes_as_the_trained_tokenizer() -> None:
    # A SentencePiece-style BPE trained here; GGUF keeps no merges for it, only scores (llama.cpp
    # writes -rank), from which the merges are rebuilt.
    from tokenizers import SentencePieceBPETokenizer

    from ember.loader.gguf_tokenizer import tokenizer_from_gguf

    corpus = ["the quick brown fox jumps over the lazy dog", "hello world, the world says hi"]
    sp = SentencePieceBPETokenizer(add_prefix_space=True)
    sp.train_from_iterator(
        corpus * 20, vocab_size=60, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tokens = [""] * sp.get_vocab_size()
    for tok, i in sp.get_vocab().items():
        tokens[i] = tok
    meta = {
        "model": "llama",
        "tokens": tokens,
        "scores": [-float(i) for i in range(len(tokens))],
        "token_type": [2, 3, 3] + [1] * (len(tokens) - 3),
        "bos_token_id": 1,
        "unknown_token_id": 0,
    }
    ours = tokenizer_from_gguf(meta)
    for text in ("the quick brown fox", "hello, the lazy world says", "brown dogs jump"):
        want = sp.encode(text).ids
        got = ours.encode(text).ids
        assert got == [1, *want]  # add_bos_token defaults to true for SentencePiece vocabs
        assert ours.decode(got) == text


def test_ollama_gemma3_metadata(tmp_path: Path) -> None:
    # Ollama's own converter names the rope bases rope.global/local.freq_base, marks sliding
    # layers with one flag each, and keeps the vision tower (v.*, mm.*) in the same file.
    from ember.loader.gguf_model import GGUFModel
    from ember.models.config import FULL_ATTENTION, SLIDING_ATTENTION, ModelConfig

    w = gguf.GGUFWriter(str(tmp_path / "g3.gguf"), "gemma3")
    w.add_block_count(3)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_key_length(4)
    w.add_sliding_window(512)
    w.add_sliding_window_pattern([True, False, True])
    w.add_float32("gemma3.rope.global.freq_base", 2e6)
    w.add_float32("gemma3.rope.local.freq_base", 5e3)
    w.add_float32("gemma3.rope.freq_scale", 0.125)
    w.add_tensor("token_embd.weight", torch.zeros(32, 8).numpy())
    w.add_tensor("v.patch_embd.weight", torch.zeros(2, 2).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    model = GGUFModel.open(tmp_path / "g3.gguf")
    cfg = ModelConfig.from_dict(model.hf_config())
    assert cfg.layer_types == [SLIDING_ATTENTION, FULL_ATTENTION, SLIDING_ATTENTION]
    assert (cfg.rope_theta, cfg.rope_local_theta) == (2e6, 5e3)
    assert cfg.rope_scaling == {"rope_type": "linear", "factor": 8.0}
    assert cfg.vocab_size == 32 and cfg.tie_word_embeddings and cfg.sliding_window == 512
    assert [name for name, _ in model.tensors(["model.embed_tokens.weight"])] == [
        "model.embed_tokens.weight"
    ]


def _qwen2_rope_gguf(path: Path, kind: str, extra: dict[str, float]) -> Any:
    """A minimal qwen2 GGUF (metadata and an embedding) with rope scaling `kind` and float
    keys `extra` under qwen2.rope.scaling."""
    from ember.loader.gguf_model import GGUFModel

    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_block_count(1)
    w.add_context_length(32768)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_rope_freq_base(1e6)
    w.add_string("qwen2.rope.scaling.type", kind)
    for key, value in extra.items():
        w.add_float32(f"qwen2.rope.scaling.{key}", value)
    w.add_tensor("token_embd.weight", torch.zeros(32, 8).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return GGUFModel.open(path)


def test_yarn_metadata_without_an_original_context(tmp_path: Path) -> None:
    from ember.models.config import ModelConfig

    model = _qwen2_rope_gguf(tmp_path / "y.gguf", "yarn", {"factor": 4.0, "yarn_beta_slow": 2.0})
    cfg = ModelConfig.from_dict(model.hf_config())
    # llama.cpp's default original context is the trained one, as transformers' is.
    assert cfg.rope_scaling == {
        "rope_type": "yarn",
        "factor": 4.0,
        "beta_slow": 2.0,
        "original_max_position_embeddings": 32768,
    }
    assert cfg.max_position_embeddings == 32768 and cfg.max_context_len == 131072


@pytest.mark.parametrize(
    ("kind", "extra", "message"),
    [
        ("yarn", {"factor": 4.0, "yarn_attn_factor": 0.5}, "yarn_attn_factor = 0.5 in"),
        ("yarn", {"factor": 4.0, "yarn_log_multiplier": 0.1}, "yarn_log_multiplier"),
        ("yarn", {}, "needs a positive qwen2.rope.scaling.factor"),
        ("longrope", {}, "rope scaling 'longrope' in .* supported: none, linear, yarn"),
    ],
)
def test_rope_scaling_llama_cpp_would_compute_otherwise_is_refused(
    tmp_path: Path, kind: str, extra: dict[str, float], message: str
) -> None:
    model = _qwen2_rope_gguf(tmp_path / "r.gguf", kind, extra)
    with pytest.raises(ModelLoadError, match=message):
        model.hf_config()


def test_an_unknown_pre_tokenizer_is_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from ember.loader.gguf_tokenizer import tokenizer_from_gguf

    meta = {"model": "gpt2", "tokens": ["a", "b", "ab"], "merges": ["a b"], "pre": "viking"}
    with caplog.at_level("WARNING"):
        tok = tokenizer_from_gguf(meta)
    assert tok.encode("ab").ids == [2]
    assert "viking" in caplog.text and "safetensors" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        tokenizer_from_gguf({**meta, "pre": "gpt-2"})
    assert not caplog.text


# The split of Mistral Nemo's tokenizer.json (Tekken), as Hugging Face writes it.
_NEMO_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def test_tekken_vocab_encodes_as_the_trained_tokenizer(caplog: pytest.LogCaptureFixture) -> None:
    """A Tekken GGUF (Mistral Nemo, Small 3) splits words at case changes and digits one by one,
    as its tokenizer.json does; it had been split as GPT-2 with a warning."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tok_models

    from ember.loader.gguf_tokenizer import tokenizer_from_gguf

    hf = Tokenizer(tok_models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_NEMO_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    corpus = ["HelloWorld says hello to the World 2024/11", "CamelCaseWords and snake_case 1234"]
    hf.train_from_iterator(
        corpus * 20,
        trainers.BpeTrainer(
            vocab_size=300,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    vocab = hf.get_vocab()
    tokens = [""] * len(vocab)
    for tok, i in vocab.items():
        tokens[i] = tok
    merges = [f"{a} {b}" for a, b in json.loads(hf.to_str())["model"]["merges"]]
    with caplog.at_level("WARNING"):
        ours = tokenizer_from_gguf(
            {"model": "gpt2", "tokens": tokens, "merges": merges, "pre": "tekken"}
        )
    assert not caplog.text
    for text in ("HelloWorld 2024/11", "CamelCase hello\n\nWorld", "snake_case//x ÉcoleNormale"):
        assert ours.encode(text).ids == hf.encode(text).ids
        assert ours.decode(ours.encode(text).ids) == text
