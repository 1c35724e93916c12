"""A chat's prompt text as vLLM renders it (for /v1/chat/completions, /tokenize and the offline
LLM.chat): `chat_template_kwargs` override the request's own template arguments, and
`continue_final_message` leaves the last message open for the model to go on with."""

from __future__ import annotations

from typing import Any

from ember.errors import InvalidRequestError
from ember.tokenizer.tokenizer import Tokenizer

Conversation = list[dict[str, Any]]


def as_conversations(messages: Any) -> tuple[list[Conversation], bool]:
    """One conversation (a list of message dicts) or a list of them, as vLLM's LLM.chat and
    Hugging Face's apply_chat_template take them; the bool says whether it was a list."""
    batch = bool(messages) and not isinstance(messages[0], dict)
    return (list(messages) if batch else [messages]), batch


def render_chat(
    tok: Tokenizer,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool,
    continue_final_message: bool = False,
    tools: list[dict[str, Any]] | None = None,
    template_kwargs: dict[str, Any] | None = None,
    chat_template: str | None = None,
) -> str:
    """`chat_template` replaces the model's template; it must come from the operator or the
    offline caller, never from a request's template_kwargs."""
    extra = dict(template_kwargs or {})
    if "messages" in extra:
        raise InvalidRequestError(
            "chat_template_kwargs cannot set 'messages'; send the conversation in messages",
            param="chat_template_kwargs",
        )
    add_generation_prompt = bool(extra.pop("add_generation_prompt", add_generation_prompt))
    continue_final_message = bool(extra.pop("continue_final_message", continue_final_message))
    tools = extra.pop("tools", tools)
    if add_generation_prompt and continue_final_message:
        raise InvalidRequestError(
            "continue_final_message and add_generation_prompt cannot both be true; set "
            "add_generation_prompt to false to continue the last message",
            param="continue_final_message",
        )
    text = tok.render_template(
        messages,
        add_generation_prompt=add_generation_prompt,
        tools=tools or None,
        template_kwargs=extra,
        template=chat_template,
    )
    return _left_open(text, messages[-1]) if continue_final_message else text


def _left_open(text: str, final: dict[str, Any]) -> str:
    """`text` cut just after the final message's content, so that nothing closes it."""
    content = final.get("content")
    if not isinstance(content, str) or not content.strip():
        raise InvalidRequestError(
            "continue_final_message needs a last message with text content to continue",
            param="messages",
        )
    for piece in (content, content.strip()):  # some templates strip messages
        at = text.rfind(piece)
        if at >= 0:
            return text[: at + len(piece)]
    raise InvalidRequestError(
        "continue_final_message is set, but the chat template does not render the last "
        "message's content as sent, so it cannot be left open",
        param="continue_final_message",
    )
