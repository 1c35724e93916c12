from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ember.errors import InvalidRequestError, ModelLoadError
from ember.tokenizer import Tokenizer
from ember.tokenizer.chat_template import compile_template
from tests.tokenizer.tokenizer_builders import (
    CHATML_TEMPLATE,
    MakeModelDir,
    load_transformers_tokenizer,
)

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in <city> & région — 東京 ok",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You answer in one line.  "},
        {"role": "user", "content": "Wie spät ist es in Zürich? 😀"},
        {"role": "assistant", "content": "Zehn Uhr."},
        {"role": "user", "content": "Und in 東京?"},
    ],
    [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,  # as OpenAI clients send it next to tool_calls
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "content": '{"temp_c": 21}'},
    ],
    [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "Simple sum."},
        {"role": "user", "content": "3+3?"},
    ],
]


@pytest.mark.parametrize("which", ["byte_level_dir", "sentencepiece_dir"])
@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("tools", [None, [WEATHER_TOOL]])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_rendering_matches_transformers(
    request: pytest.FixtureRequest,
    which: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    add_generation_prompt: bool,
) -> None:
    path: Path = request.getfixturevalue(which)
    ours = Tokenizer.from_dir(path).apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tools=tools
    )
    theirs = load_transformers_tokenizer(path).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, tools=tools
    )
    assert ours == theirs
    assert "None" not in ours
    if tools:
        assert "get_weather" in ours


def test_template_kwargs_reach_the_template(sentencepiece_dir: Path) -> None:
    messages = [{"role": "user", "content": "hi"}]
    tk = Tokenizer.from_dir(sentencepiece_dir)
    ours = tk.apply_chat_template(messages, enable_thinking=False)
    theirs = load_transformers_tokenizer(sentencepiece_dir).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert ours == theirs
    assert ours.endswith("<think>\n\n</think>\n\n")
    assert not tk.apply_chat_template(messages).endswith("</think>\n\n")


def test_thinking_field_is_passed_as_reasoning_content(sentencepiece_dir: Path) -> None:
    tk = Tokenizer.from_dir(sentencepiece_dir)
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "thinking": "let me see"},
    ]
    assert "<think>\nlet me see\n</think>" in tk.apply_chat_template(messages)


def test_llama3_template_uses_bos_and_date(byte_level_dir: Path) -> None:
    tk = Tokenizer.from_dir(byte_level_dir)
    text = tk.apply_chat_template(
        [{"role": "user", "content": "hi"}], tools=[WEATHER_TOOL], date_string="01 Jan 2025"
    )
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert "Today Date: 01 Jan 2025\n" in text
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_raise_exception_becomes_invalid_request(byte_level_dir: Path) -> None:
    tk = Tokenizer.from_dir(byte_level_dir)
    with pytest.raises(InvalidRequestError, match="unknown role: narrator") as info:
        tk.apply_chat_template([{"role": "narrator", "content": "Once upon a time"}])
    assert info.value.status_code == 400


def test_tojson_keeps_unicode_and_html_and_takes_indent(model_dir_with: MakeModelDir) -> None:
    template = "{{ messages[0] | tojson }}|{{ tools | tojson(indent=2) }}"
    tk = Tokenizer.from_dir(model_dir_with({"chat_template": template}))
    message = {"role": "user", "content": "<b>é 東京 'q' & \"x\"</b>"}
    compact, indented = tk.apply_chat_template([message], tools=[{"a": [1]}]).split("|")
    assert compact == json.dumps(message, ensure_ascii=False)
    assert indented == '[\n  {\n    "a": [\n      1\n    ]\n  }\n]'


def test_no_template_says_to_send_a_raw_prompt(sentencepiece_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes((sentencepiece_dir / "tokenizer.json").read_bytes())
    tk = Tokenizer.from_dir(tmp_path)
    assert tk.chat_template is None
    with pytest.raises(InvalidRequestError, match=r"no chat template.*/v1/completions"):
        tk.apply_chat_template([{"role": "user", "content": "hi"}])


def test_named_templates_and_tool_use(model_dir_with: MakeModelDir) -> None:
    config = {
        "chat_template": [
            {"name": "default", "template": "plain:{{ messages[0].content }}"},
            {"name": "tool_use", "template": "tools:{{ tools | length }}"},
        ]
    }
    tk = Tokenizer.from_dir(model_dir_with(config))
    messages = [{"role": "user", "content": "x"}]
    assert tk.chat_template == "plain:{{ messages[0].content }}"
    assert tk.apply_chat_template(messages) == "plain:x"
    assert tk.apply_chat_template(messages, tools=[WEATHER_TOOL]) == "tools:1"


def test_template_files_take_precedence(model_dir_with: MakeModelDir) -> None:
    config = {"chat_template": "from-config"}
    json_only = model_dir_with(config, {"chat_template.json": '{"chat_template": "from-json"}'})
    assert Tokenizer.from_dir(json_only).chat_template == "from-json"
    both = model_dir_with(config, {"chat_template.jinja": "from-jinja"})
    assert Tokenizer.from_dir(both).chat_template == "from-jinja"


def test_generation_block_renders_its_body(sentencepiece_dir: Path) -> None:
    assert "{% generation %}" in CHATML_TEMPLATE
    text = Tokenizer.from_dir(sentencepiece_dir).apply_chat_template(
        [{"role": "assistant", "content": "kept"}], add_generation_prompt=False
    )
    assert text == "<|im_start|>assistant\nkept<|im_end|>\n"


@pytest.mark.parametrize(
    "template",
    [
        "{{ messages.__class__.__mro__ }}",
        "{% set ns = namespace() %}{% set ns._secret = 1 %}",
        "{{ messages.append(1) }}",
        "{{ messages[0].content.missing.deeper }}",
    ],
)
def test_sandbox_and_template_errors_are_invalid_requests(
    model_dir_with: MakeModelDir, template: str
) -> None:
    tk = Tokenizer.from_dir(model_dir_with({"chat_template": template}))
    with pytest.raises(InvalidRequestError, match="chat template"):
        tk.apply_chat_template([{"role": "user", "content": "x"}])


def test_syntax_error_is_a_model_load_error(model_dir_with: MakeModelDir) -> None:
    tk = Tokenizer.from_dir(model_dir_with({"chat_template": "{% if %}"}))
    with pytest.raises(ModelLoadError, match="does not compile"):
        tk.apply_chat_template([{"role": "user", "content": "x"}])


def test_templates_are_compiled_once() -> None:
    source = "{{ messages | length }} compiled once"
    assert compile_template(source) is compile_template(source)
