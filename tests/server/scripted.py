"""Scripted models: tiny Llama checkpoints whose greedy (and, by a wide margin, sampled) reply is
fixed text, so server tests can see how a given reply is shaped into tool calls and reasoning.

Every layer adds nothing to the residual stream (o_proj and down_proj are zero), so the logits
depend on the current token alone: a bigram table. A script is a chain of tokens, each the
only successor of the one before; it starts at the last token of a prompt. Each piece of the
reply is one added token, so any text can be a step; the tokens that lead somewhere have
orthogonal embeddings, so no step leaks into another.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from serverproc import COMMON_ARGS, Server, start
from tokenizers import AddedToken
from tokenizers import Tokenizer as Backend

from ember.tokenizer import Tokenizer
from tests.tokenizer.tokenizer_builders import (
    CHATML_TEMPLATE,
    build_byte_fallback,
    build_byte_level,
    write_model_dir,
)

HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 64, 128, 1, 4, 2, 16
SCALE = 200.0  # logit of the scripted next token; every other token's is 0

# mistralai/Mistral-7B-Instruct-v0.3's chat template, as its tokenizer_config.json has it.
MISTRAL_V03_TEMPLATE = """\
{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS][" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST]" + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST]" + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif (message.tool_calls is defined and message.tool_calls is not none) %}
        {{- "[TOOL_CALLS][" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- message["content"] + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS]{"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

# Qwen3 style: where a generation prompt ends, thinking on or off.
QWEN_OPEN = "<|im_start|>assistant\n"
QWEN_OFF = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
# DeepSeek-R1 / Qwen3.5 style: the generation prompt opens <think>, the reply only closes it.
R1_TEMPLATE = CHATML_TEMPLATE.replace(
    "{%- if enable_thinking is defined and not enable_thinking %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    "    {%- endif %}",
    "{%- if enable_thinking is defined and not enable_thinking %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    "    {%- else %}{{- '<think>\\n' }}{%- endif %}",
)

MISTRAL_SPECIALS = [
    "[INST]",
    "[/INST]",
    "[TOOL_CALLS]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[ARGS]",
]

# get_weather(city="Paris") as a Mistral v0.3 model writes it after [TOOL_CALLS], and as Qwen does.
MISTRAL_CALL = ' [{"name": "get_weather", "arguments": {"city": "Paris"}}]'
QWEN_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def write_scripted(
    path: Path,
    backend: Backend,
    tokenizer_config: dict[str, object],
    eos: str,
    specials: list[str],
    scripts: dict[str, list[str]],
    plain: tuple[str, ...] = (),
) -> Path:
    """A model folder at `path` whose reply to a prompt ending like a key of `scripts` is that
    key's pieces, then `eos`. `specials` are added as special tokens; `plain` and every other
    piece as plain ones (which decoding keeps, as Qwen's <think>)."""
    backend.add_special_tokens([AddedToken(t, special=True) for t in specials])
    known = set(backend.get_vocab())
    pieces = {p for chain in scripts.values() for p in chain} | set(plain)
    pieces -= known
    backend.add_tokens([AddedToken(p, special=False, normalized=False) for p in sorted(pieces)])
    eos_id = backend.token_to_id(eos)
    config = {**tokenizer_config, "eos_token": eos, "clean_up_tokenization_spaces": False}
    write_model_dir(path, backend, config, {"eos_token_id": eos_id})
    tok = Tokenizer.from_dir(path)
    steps: dict[int, int] = {}
    for prompt, chain in scripts.items():
        ids = [tok.encode(prompt, add_special_tokens=False)[-1]]
        ids += [_one_token(backend, p) for p in chain] + [eos_id]
        for a, b in itertools.pairwise(ids):
            assert steps.setdefault(a, b) == b, f"{tok.decode([a])!r} leads to two tokens"
    vocab = backend.get_vocab_size(with_added_tokens=True)
    _write_weights(path, vocab, steps, eos_id)
    return path


def _one_token(backend: Backend, piece: str) -> int:
    token_id = backend.token_to_id(piece)
    assert token_id is not None, piece
    return token_id


def _write_weights(path: Path, vocab: int, steps: dict[int, int], eos_id: int) -> None:
    assert len(steps) <= HIDDEN
    gen = torch.Generator().manual_seed(0)
    embed = torch.randn(vocab, HIDDEN, generator=gen)
    basis, _ = torch.linalg.qr(torch.randn(HIDDEN, HIDDEN, generator=gen))
    lm_head = torch.zeros(vocab, HIDDEN)
    for k, (now, then) in enumerate(steps.items()):
        embed[now] = basis[:, k]
        lm_head[then] += SCALE * basis[:, k]
    # Unit vectors times sqrt(HIDDEN): RMSNorm (weight 1) leaves them as they are.
    embed = embed / embed.norm(dim=1, keepdim=True) * HIDDEN**0.5
    lm_head = lm_head / HIDDEN**0.5
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    tensors = {"model.embed_tokens.weight": embed, "lm_head.weight": lm_head}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes = {
            "self_attn.q_proj": (q, HIDDEN),
            "self_attn.k_proj": (kv, HIDDEN),
            "self_attn.v_proj": (kv, HIDDEN),
            "self_attn.o_proj": (HIDDEN, q),
            "mlp.gate_proj": (INTERMEDIATE, HIDDEN),
            "mlp.up_proj": (INTERMEDIATE, HIDDEN),
            "mlp.down_proj": (HIDDEN, INTERMEDIATE),
        }
        for name, shape in shapes.items():
            zero = name.endswith(("o_proj", "down_proj"))  # nothing reaches the residual
            tensors[p + name + ".weight"] = (
                torch.zeros(shape) if zero else torch.randn(shape) * 0.02
            )
        tensors[p + "input_layernorm.weight"] = torch.ones(HIDDEN)
        tensors[p + "post_attention_layernorm.weight"] = torch.ones(HIDDEN)
    tensors["model.norm.weight"] = torch.ones(HIDDEN)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "eos_token_id": eos_id,
    }
    (path / "config.json").write_text(json.dumps(config), encoding="utf-8")


def write_qwen(path: Path, scripts: dict[str, list[str]], template: str = CHATML_TEMPLATE) -> Path:
    """A ChatML model that thinks in <think>...</think>, each tag and "\n\n" one plain token
    as in Qwen's vocabulary."""
    return write_scripted(
        path,
        build_byte_level(),
        {"chat_template": template},
        "<|im_end|>",
        ["<|im_start|>", "<|im_end|>"],
        scripts,
        ("<think>", "</think>", "\n\n"),
    )


def write_mistral(path: Path, scripts: dict[str, list[str]]) -> Path:
    """A Mistral v0.3 model (its real chat template, a byte-fallback vocabulary) with [INST],
    [TOOL_CALLS], [ARGS] and the rest as special tokens."""
    return write_scripted(
        path,
        build_byte_fallback(),
        {"bos_token": "<s>", "chat_template": MISTRAL_V03_TEMPLATE},
        "</s>",
        MISTRAL_SPECIALS,
        scripts,
    )


def serve_scripted(home: Path, name: str, model: str, max_loaded: int, *flags: str) -> Server:
    """`ember serve MODEL` over the scripted models written under home/models, each loaded on
    first use (up to `max_loaded` at once) with a small KV cache."""
    args = ("--max-loaded-models", str(max_loaded), "--kv-cache-memory-gb", "0.01", *COMMON_ARGS)
    return start(home, name, model, *args, *flags, env={"EMBER_HOME": str(home)})
