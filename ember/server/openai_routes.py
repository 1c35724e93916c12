"""The OpenAI API as vLLM serves it: /v1/models, /v1/models/{id}, /tokenize, /detokenize
here; /v1/completions in openai_completions.py, /v1/chat/completions in openai_chat.py,
/v1/responses in openai_responses.py.

Streams are SSE (`data: {...}` events ending with `data: [DONE]`); errors are
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from ember.errors import InvalidRequestError, ModelNotFoundError
from ember.server.context import get_context, read_json
from ember.server.openai_chat import router as chat_router
from ember.server.openai_completions import router as completions_router
from ember.server.openai_responses import router as responses_router
from ember.server.protocol_openai import ChatMessage, now_s
from ember.tokenizer.chat_prompt import render_chat

router = APIRouter()


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_card(request)]}


@router.get("/v1/models/{model_id:path}")
async def model(request: Request, model_id: str) -> dict[str, Any]:
    if not get_context(request).served.matches(model_id):
        raise ModelNotFoundError(f"The model `{model_id}` does not exist.", param="model")
    return _card(request)


def _card(request: Request) -> dict[str, Any]:
    served = get_context(request).served
    engine = served.engine
    local = served.local_model
    return {
        "id": served.name,
        "object": "model",
        "created": now_s(),
        "owned_by": "ember",
        "root": str(local.path) if local is not None else served.config.model,
        "parent": None,
        "max_model_len": engine.max_model_len if engine else served.config.context_length,
        "permission": [],
    }


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    tools: list[dict[str, Any]] | None = None
    return_token_strs: bool = False
    chat_template_kwargs: dict[str, Any] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[int]


@router.post("/tokenize")
async def tokenize(request: Request) -> dict[str, Any]:
    """vLLM's /tokenize: a prompt, or chat messages rendered with the chat template."""
    ctx = get_context(request)
    body = await read_json(request, TokenizeRequest)
    ctx.served.require(body.model)
    engine, _ = await ctx.wait_ready(request)
    tok = engine.tokenizer
    if body.messages is not None:
        if not body.messages:
            raise InvalidRequestError("messages must not be empty", param="messages")
        text = render_chat(
            tok,
            [m.for_template() for m in body.messages],
            add_generation_prompt=body.add_generation_prompt,
            continue_final_message=body.continue_final_message,
            tools=body.tools,
            template_kwargs=body.chat_template_kwargs,
        )
        ids = tok.encode(text, add_special_tokens=False)
    elif body.prompt is not None:
        ids = tok.encode(body.prompt, add_special_tokens=body.add_special_tokens)
    else:
        raise InvalidRequestError("send prompt or messages", param="prompt")
    out: dict[str, Any] = {"count": len(ids), "max_model_len": engine.max_model_len, "tokens": ids}
    out["token_strs"] = [tok.id_to_token(i) for i in ids] if body.return_token_strs else None
    return out


@router.post("/detokenize")
async def detokenize(request: Request) -> dict[str, Any]:
    ctx = get_context(request)
    body = await read_json(request, DetokenizeRequest)
    ctx.served.require(body.model)
    engine, _ = await ctx.wait_ready(request)
    tok = engine.tokenizer
    bad = next((t for t in body.tokens if not 0 <= t < tok.vocab_size), None)
    if bad is not None:
        raise InvalidRequestError(f"token id {bad} is outside the vocabulary", param="tokens")
    return {"prompt": tok.decode(body.tokens, skip_special_tokens=False)}  # as vLLM


router.include_router(completions_router)
router.include_router(chat_router)
router.include_router(responses_router)
