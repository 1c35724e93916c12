"""The prompt of an Ollama /api/generate request: raw text, the model's chat template, a request
`template` (Ollama's Go-template syntax, the subset Modelfiles use), or fill-in-the-middle with
`suffix` for models whose tokenizer has FIM tokens."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ember.errors import InvalidRequestError
from ember.tokenizer import Tokenizer

# (prefix, suffix, middle) special tokens of the FIM-trained families ember serves.
_FIM_TOKENS = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder
    ("<|fim_begin|>", "<|fim_hole|>", "<|fim_end|>"),  # DeepSeek-Coder (ASCII variant)
)

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)
_FIELDS = {".System", ".Prompt", ".Response", ".Suffix"}


def fim_prompt(tok: Tokenizer, prompt: str, suffix: str, model: str) -> str:
    """`prompt` and `suffix` around the hole, in the model's FIM tokens; 400 without them."""
    for pre, suf, mid in _FIM_TOKENS:
        if all(tok.token_to_id(t) is not None for t in (pre, suf, mid)):
            return f"{pre}{prompt}{suf}{suffix}{mid}"
    raise InvalidRequestError(
        f"{model} does not support insert: its tokenizer has no fill-in-the-middle tokens; "
        "leave out suffix or use a code model such as qwen2.5-coder",
        param="suffix",
    )


def render_go_template(template: str, values: dict[str, str]) -> str:
    """Render Ollama's Go-template subset: `{{ .System }}`, `{{ .Prompt }}`, `{{ .Response }}`,
    `{{ .Suffix }}`, `{{ if .X }}...{{ else }}...{{ end }}` (nestable), and `{{-`/`-}}` trimming.
    Anything else (range over .Messages, functions) is a 400 that says so."""
    out: list[str] = []
    # Each open `if` pushes (emitting_before, condition_true); text is emitted when all are on.
    stack: list[tuple[bool, bool]] = []
    emitting = True
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        if m.group(1):
            text = text.rstrip()
        if emitting:
            out.append(text)
        pos = m.end()
        if m.group(3):
            rest = template[pos:]
            pos += len(rest) - len(rest.lstrip())
        action = m.group(2)
        if action.startswith("if "):
            field = action[3:].strip()
            _check_field(field)
            cond = bool(values.get(field[1:], ""))
            stack.append((emitting, cond))
            emitting = emitting and cond
        elif action == "else":
            if not stack:
                raise _unsupported("{{ else }} without {{ if }}")
            before, cond = stack[-1]
            stack[-1] = (before, not cond)
            emitting = before and not cond
        elif action == "end":
            if not stack:
                raise _unsupported("{{ end }} without {{ if }}")
            emitting = stack.pop()[0]
        else:
            _check_field(action)
            if emitting:
                out.append(values.get(action[1:], ""))
    if stack:
        raise _unsupported("{{ if }} without {{ end }}")
    if emitting:
        out.append(template[pos:])
    return "".join(out)


def _check_field(field: str) -> None:
    if field not in _FIELDS:
        raise _unsupported(f"{{{{ {field} }}}}")


def _unsupported(what: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"template: {what} is not supported; ember renders .System, .Prompt, .Response, .Suffix "
        "and if/else/end. Leave template out to use the model's chat template",
        param="template",
    )


def prompt_limit(prompt_len: int, ctx_len: int, num_predict: int | None) -> int:
    """The most tokens a prompt of `prompt_len` may keep in a context of `ctx_len` tokens.

    Ollama cuts a prompt to the context and then shifts the context while generating, so a
    reply gets its num_predict tokens whatever the prompt's length. ember does not shift, so
    the cut leaves the reply its room up front: a prompt that fits together with num_predict
    tokens (or one token, when num_predict is unset) is kept whole; a longer one is cut to leave
    num_predict tokens, or a quarter of the context when num_predict is unset, and the reply
    never takes more than half of the context."""
    reply = num_predict if num_predict is not None and num_predict > 0 else 0
    if prompt_len + max(reply, 1) <= ctx_len:
        return prompt_len
    reserve = max(1, min(reply or ctx_len // 4, ctx_len // 2))
    return max(1, ctx_len - reserve)


def fit_tokens(ids: list[int], limit: int, bos_id: int | None) -> list[int]:
    """Ollama's truncation for /api/generate: keep the last `limit` tokens (and a leading BOS)."""
    if len(ids) <= limit:
        return ids
    if bos_id is not None and ids and ids[0] == bos_id:
        return [bos_id, *ids[len(ids) - limit + 1 :]]
    return ids[len(ids) - limit :]


Render = Callable[[list[dict[str, Any]]], tuple[str, list[int]]]


def fit_messages(
    messages: list[dict[str, Any]],
    render: Render,
    limit: Callable[[int], int],
    bos_id: int | None,
) -> tuple[str, list[int]]:
    """Ollama's truncation for /api/chat, `limit(n)` giving the most tokens a prompt of n tokens
    may keep (prompt_limit). First drop the oldest messages, never a system message nor the
    last one, as Ollama's chatPrompt does. If the prompt is still too long, cut the last
    message's content by tokens where Ollama's runner would cut the whole sequence: ember keeps
    the start of the prompt (template, system prompt, the message's header) and the end (the
    message's last tokens and the generation prompt), dropping the content's oldest tokens, so
    the system prompt survives. Returns the rendered text (before the cut) and the ids."""
    kept = list(messages)
    text, ids = render(kept)
    while len(ids) > limit(len(ids)):
        drop = next((i for i, m in enumerate(kept[:-1]) if m.get("role") != "system"), None)
        if drop is None:
            return text, _cut_last_message(kept, render, ids, limit(len(ids)), bos_id)
        del kept[drop]
        text, ids = render(kept)
    return text, ids


def _cut_last_message(
    messages: list[dict[str, Any]], render: Render, ids: list[int], limit: int, bos_id: int | None
) -> list[int]:
    """`ids` (the rendering of `messages`) in `limit` tokens, by dropping the oldest tokens of
    the last message's content; the tokens the content does not touch are found by rendering
    the messages again with that content empty."""
    _, empty = render([*messages[:-1], {**messages[-1], "content": ""}])
    head = 0
    while head < min(len(ids), len(empty)) and ids[head] == empty[head]:
        head += 1
    tail = 0
    while tail < min(len(ids), len(empty)) - head and ids[-1 - tail] == empty[-1 - tail]:
        tail += 1
    room = limit - head - tail
    if room <= 0:  # the rest of the prompt alone is too long: keep its end
        return fit_tokens(ids, limit, bos_id)
    return [*ids[:head], *ids[len(ids) - tail - room :]]
