"""`ember run`: a one-shot answer or a chat on the terminal, like `ollama run`, with the engine
in this process. Imports stay lazy: `ember --help` imports this module."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ember.config import ServeConfig

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine
    from ember.server.protocol_ollama import Options


def prompt_and_mode(words: Sequence[str]) -> tuple[str, bool]:
    """(prompt, chat on the terminal?) as `ollama run` takes them: input piped in is read whole
    and goes before the prompt's words, joined by a space; a chat needs a terminal and no
    prompt."""
    parts = list(words)
    piped = not sys.stdin.isatty()
    if piped:
        text = sys.stdin.read()
        if text:
            parts.insert(0, text)
    return " ".join(parts), not piped and not parts


def run(config: ServeConfig, prompt: str, options: dict[str, Any], interactive: bool) -> int:
    """`ember run`: like `ollama run`, with the engine in this process."""
    import asyncio

    from ember.errors import EmberError

    try:
        return asyncio.run(_run_async(config, prompt, options, interactive))
    except EmberError as e:
        print(f"Error: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _run_async(
    config: ServeConfig, prompt: str, options: dict[str, Any], interactive: bool
) -> int:
    import asyncio

    from ember.errors import InvalidRequestError, ModelLoadError
    from ember.server.served_model import engine_args, make_engine

    store = config.model_store()
    local = await asyncio.to_thread(store.resolve, config.model)
    if local.details.family == "bert":
        raise ModelLoadError(
            f"'{config.model}' is an embedding model: it turns text into vectors and does not "
            f"generate; serve it ('ember serve {config.model}') and call /api/embed or "
            "/v1/embeddings"
        )
    if not interactive and not prompt:
        return 0  # nothing piped in and no prompt: nothing to answer
    defaults = dict(await asyncio.to_thread(store.params, local))
    system = await asyncio.to_thread(store.system, local)
    args = engine_args(config, local, config.served_model_name or local.name, store)
    engine = await asyncio.to_thread(make_engine, args)
    try:
        chat = _Chat(engine, defaults, options, system)
        if not interactive:
            await chat.turn(prompt)
            return 0
        while True:
            print(">>> ", end="", flush=True)
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line or line.strip() == "/bye":
                return 0
            if line.strip():
                try:
                    await chat.turn(line.strip())
                except InvalidRequestError as e:  # e.g. the conversation outgrew the context
                    print(f"Error: {e.message}", file=sys.stderr)
    finally:
        await asyncio.to_thread(engine.shutdown)


def _merge_options(defaults: dict[str, Any], options: dict[str, Any]) -> Options:
    """The model's params.json beneath the flags. A stored value no request could use (written
    by hand, or before create checked parameters) is named as the model's, with where to fix
    it, rather than as if the user had typed it."""
    from ember.errors import InvalidRequestError, ModelLoadError
    from ember.server.protocol_ollama import merge_options

    try:
        merge_options(defaults, None)
    except InvalidRequestError as e:
        raise ModelLoadError(
            f"the model's stored parameters are invalid ({e.message}); fix or delete them in "
            "the model's params.json, or create the model again"
        ) from None
    return merge_options(defaults, options)


class _Chat:
    """A conversation kept across turns, printed to stdout as it streams."""

    def __init__(
        self,
        engine: AsyncEngine,
        defaults: dict[str, Any],
        options: dict[str, Any],
        system: str | None,
    ) -> None:
        self.engine = engine
        self.defaults = defaults
        self.options = options
        self.messages: list[dict[str, Any]] = (
            [{"role": "system", "content": system}] if system else []
        )
        self.turns = 0

    def _prompt_ids(self) -> list[int]:
        tok = self.engine.tokenizer
        if tok.chat_template is None:  # no template: continue the plain transcript
            text = "\n".join(m["content"] for m in self.messages)
            return tok.encode(text, add_special_tokens=True)
        text = tok.apply_chat_template(self.messages, add_generation_prompt=True)
        return tok.encode(text, add_special_tokens=False)

    async def turn(self, user_text: str) -> str:
        from ember.server.protocol_ollama import sampling_params

        self.messages.append({"role": "user", "content": user_text})
        try:
            ids = self._prompt_ids()
            opts = _merge_options(self.defaults, self.options)
            params = sampling_params(opts, len(ids), self.engine.max_model_len)
        except Exception:
            self.messages.pop()
            raise
        self.turns += 1
        parts: list[str] = []
        async for out in self.engine.generate(f"run-{self.turns}", ids, params):
            text = out.outputs[0].text
            if text:
                parts.append(text)
                sys.stdout.write(text)
                sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        reply = "".join(parts)
        self.messages.append({"role": "assistant", "content": reply})
        return reply
