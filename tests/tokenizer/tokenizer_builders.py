"""Tokenizers built on the spot: trained with the `tokenizers` library on a small text and written
as Hugging Face model directories, so tests need no downloads. Also the chat templates under test."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend
from tokenizers.implementations import SentencePieceBPETokenizer
from tokenizers.trainers import BpeTrainer

TRAIN_TEXT = """\
The river runs past the old mill, and the miller counts the sacks of grain every morning.
She said: "Don't forget the keys!" and he replied, 'I won't, I'll be back by 7:45.'
Numbers like 12, 345 and 6789 appear in reports; so do symbols such as $, %, & and #.
Café owners in Zürich serve crème brûlée; the naïve señor orders jalapeño piñata snacks.
東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.
Emoji travel too: 😀 🚀 🎉 👍🏽 and flags like 🇫🇷 show up in chats.
def add(a, b):\n    return a + b  # a tiny function with    extra   spaces
Tabs\tand\tnewlines\n\nmatter for code, and so does trailing whitespace.\x20\x20\n
"""

# (tokenizer_config.json contents, {relative path: text}) -> model directory
MakeModelDir = Callable[..., Path]


def training_lines() -> list[str]:
    return TRAIN_TEXT.splitlines() * 20


LLAMA3_TEMPLATE = """\
{%- if date_string is not defined %}{% set date_string = strftime_now('%d %b %Y') %}{% endif %}
{%- if messages and messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = '' %}
{%- endif %}
{{- bos_token }}
{%- if system_message or tools %}
    {{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}
    {%- if tools %}
        {{- 'Today Date: ' + date_string + '\\n' }}
        {{- 'You can call these functions. Reply with JSON {"name": ..., "parameters": ...}.\\n\\n' }}
        {%- for tool in tools %}
            {{- tool | tojson(indent=4) }}
            {{- '\\n\\n' }}
        {%- endfor %}
    {%- endif %}
    {{- system_message + '<|eot_id|>' }}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] not in ['user', 'assistant', 'tool'] %}
        {{- raise_exception('unknown role: ' + message['role']) }}
    {%- endif %}
    {%- if message['role'] == 'tool' %}
        {{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' }}
        {%- if message['content'] is mapping %}
            {{- message['content'] | tojson }}
        {%- else %}
            {{- message['content'] }}
        {%- endif %}
    {%- elif message['tool_calls'] is defined %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
        {%- for call in message['tool_calls'] %}
            {%- set f = call['function'] if call['function'] is defined else call %}
            {{- '{"name": "' + f['name'] + '", "parameters": ' + (f['arguments'] | tojson) + '}' }}
        {%- endfor %}
    {%- else %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
        {{- message['content'] | trim }}
    {%- endif %}
    {{- '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

CHATML_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- '# Tools\\n\\nFunction signatures are inside <tools></tools>:\\n<tools>' }}
    {%- for tool in tools %}
        {{- '\\n' + (tool | tojson) }}
    {%- endfor %}
    {{- '\\n</tools><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(turns=0) %}
{%- for message in messages %}
    {%- if message.role == 'system' %}
        {%- continue %}
    {%- endif %}
    {%- set ns.turns = ns.turns + 1 %}
    {%- if message.role == 'assistant' %}
        {{- '<|im_start|>assistant\\n' }}
        {%- if message.reasoning_content %}
            {{- '<think>\\n' + message.reasoning_content + '\\n</think>\\n\\n' }}
        {%- endif %}
        {% generation %}
        {{- message.content if message.content is string else '' }}
        {%- for call in message.tool_calls or [] %}
            {{- '<tool_call>\\n' + {'name': call.function.name, 'arguments': call.function.arguments} | tojson + '\\n</tool_call>' }}
        {%- endfor %}
        {% endgeneration %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == 'tool' %}
        {{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and not enable_thinking %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]


def write_model_dir(
    path: Path, backend: Backend, tokenizer_config: dict[str, Any], generation: dict[str, Any]
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    backend.save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **tokenizer_config}
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    if generation:
        (path / "generation_config.json").write_text(json.dumps(generation), encoding="utf-8")
    return path


def build_byte_level() -> Backend:
    """GPT-2 / Llama-3 style byte-level BPE with Llama-3 special tokens and a BOS post-processor."""
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(training_lines(), trainer=trainer)
    backend.add_special_tokens([AddedToken(t, special=True) for t in LLAMA3_SPECIALS])
    bos = "<|begin_of_text|>"
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A",
        pair=f"{bos} $A {bos} $B",
        special_tokens=[(bos, backend.token_to_id(bos))],
    )
    return backend


def build_sentencepiece() -> Backend:
    """SentencePiece-style BPE ('▁' for spaces, Metaspace decoder) with ChatML tokens."""
    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(
        iter(training_lines()), vocab_size=500, special_tokens=["<unk>"], show_progress=False
    )
    backend: Backend = sp._tokenizer
    backend.add_special_tokens(
        [AddedToken(t, special=True) for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]]
    )
    return backend


def build_byte_fallback() -> Backend:
    """Llama-2 / Mistral style: BPE over '▁'-joined text with <0xNN> byte-fallback tokens."""
    backend = Backend(models.BPE(unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(Regex(" "), "▁")]
    )
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("▁"), behavior="merged_with_next")
    trainer = BpeTrainer(vocab_size=400, special_tokens=["<unk>"], show_progress=False)
    backend.train_from_iterator(training_lines(), trainer=trainer)
    spec = json.loads(backend.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    spec["pre_tokenizer"] = None
    backend = Backend.from_str(json.dumps(spec))
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    backend.add_special_tokens([AddedToken(t, special=True) for t in ["<s>", "</s>"]])
    bos = "<s>"
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A",
        pair=f"{bos} $A {bos} $B",
        special_tokens=[(bos, backend.token_to_id(bos))],
    )
    return backend


def load_transformers_tokenizer(path: Path) -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.PreTrainedTokenizerFast.from_pretrained(str(path))
