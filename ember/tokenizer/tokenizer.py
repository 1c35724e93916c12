"""The one tokenizer path: tokenizer.json through the `tokenizers` library, plus the special
tokens, eos ids and chat templates that the Hugging Face side files describe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken

from ember.errors import InvalidRequestError, ModelLoadError
from ember.tokenizer.chat_template import render_chat_template
from ember.tokenizer.files import TokenizerFiles, read_tokenizer_files

# Texts longer than this are encoded with the GIL let go (see Tokenizer.encode).
_ENCODE_HOLDING_GIL_CHARS = 16 * 1024


class Tokenizer:
    def __init__(self, backend: tokenizers.Tokenizer, files: TokenizerFiles) -> None:
        # Some tokenizer.json files (BERT exports) pad or truncate every encoding; ember pads
        # batches itself and reports over-long inputs instead of cutting them silently.
        backend.no_padding()
        backend.no_truncation()
        self._tk = backend
        self._files = files
        self._add_missing_tokens()
        self._special_tokens = dict(files.special_tokens)
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.bos_token: str | None = self._special_tokens.get("bos_token")
        self.eos_token: str | None = self._special_tokens.get("eos_token")
        self.bos_token_id: int | None = (
            backend.token_to_id(self.bos_token) if self.bos_token else files.bos_token_id
        )
        eos_ids = list(files.eos_token_ids)
        eos_id = backend.token_to_id(self.eos_token) if self.eos_token else None
        if eos_id is not None:
            eos_ids.append(eos_id)
        self.eos_token_ids: list[int] = list(dict.fromkeys(eos_ids))
        added = backend.get_added_tokens_decoder()
        named = (backend.token_to_id(t) for t in self._special_tokens.values())
        self.all_special_ids: set[int] = {i for i, t in added.items() if t.special} | {
            i for i in named if i is not None
        }
        # ByteFallback decoders (Llama 2, Mistral, Gemma) turn <0xNN> tokens into raw bytes; the
        # incremental detokenizer must hold a trailing run of them back (see detokenizer.py).
        self.byte_fallback_ids: frozenset[int] = self._byte_fallback_ids()

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """The tokenizer of a model directory, or of a model URI (s3://, gs://, http(s)://,
        hf://, file://), whose files are fetched into $EMBER_HOME/cache first."""
        if "://" in str(path):
            from ember.registry.remote import model_files

            path = model_files(str(path)).config_dir
        path = Path(path)
        file = path / "tokenizer.json"
        if not file.is_file() and not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is not a model folder: it has neither config.json nor tokenizer.json; "
                "pass a folder with a Hugging Face checkpoint or a name from 'ember list'"
            )
        if not file.is_file():
            raise ModelLoadError(
                f"{path} has no tokenizer.json; ember needs a 'fast' tokenizer file. Create it with "
                f"transformers: AutoTokenizer.from_pretrained('{path}').save_pretrained('{path}')"
            )
        try:
            backend = tokenizers.Tokenizer.from_file(str(file))
        except Exception as exc:  # the library raises a bare Exception on bad files
            raise ModelLoadError(
                f"cannot load {file}: {exc}; re-download it or upgrade the 'tokenizers' package"
            ) from exc
        return cls(backend, read_tokenizer_files(path))

    def _add_missing_tokens(self) -> None:
        # tokenizer_config.json may list added tokens that tokenizer.json lacks; transformers adds
        # them at load time, so ids past the vocab must exist here too.
        for spec in sorted(self._files.added_tokens, key=lambda s: s.id):
            if self._tk.id_to_token(spec.id) is not None:
                continue
            token = AddedToken(
                spec.content,
                single_word=spec.single_word,
                lstrip=spec.lstrip,
                rstrip=spec.rstrip,
                normalized=spec.normalized,
                special=spec.special,
            )
            if spec.special:
                self._tk.add_special_tokens([token])
            else:
                self._tk.add_tokens([token])

    def _byte_fallback_ids(self) -> frozenset[int]:
        decoder = self._tk.decoder
        if decoder is None or b'"ByteFallback"' not in decoder.__getstate__():
            return frozenset()
        ids = (self._tk.token_to_id(f"<0x{b:02X}>") for b in range(256))
        return frozenset(i for i in ids if i is not None)

    @property
    def chat_template(self) -> str | None:
        return self._files.chat_templates.get("default")

    @property
    def special_tokens(self) -> dict[str, str]:
        """Named special tokens ("bos_token" -> "<s>", ...) as chat templates see them."""
        return dict(self._special_tokens)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`. add_special_tokens applies tokenizer.json's post-processor (e.g.
        a leading BOS); pass False for prompts from a chat template that already holds one.

        A long text goes through encode_batch, which lets go of the GIL while it works (encode
        holds it: a 7 MB prompt stalled every other thread, the server's event loop too, 6 s)."""
        if len(text) > _ENCODE_HOLDING_GIL_CHARS:
            batch = self._tk.encode_batch([text], add_special_tokens=add_special_tokens)
            long_ids: list[int] = batch[0].ids
            return long_ids
        ids: list[int] = self._tk.encode(text, add_special_tokens=add_special_tokens).ids
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        text: str = self._tk.decode(ids, skip_special_tokens=skip_special_tokens)
        return text

    def backend_json(self) -> str:
        """tokenizer.json as the backend holds it (with tokenizer_config.json's added tokens)."""
        text: str = self._tk.to_str()
        return text

    def id_to_token(self, token_id: int) -> str | None:
        token: str | None = self._tk.id_to_token(token_id)
        return token

    def token_to_id(self, token: str) -> int | None:
        token_id: int | None = self._tk.token_to_id(token)
        return token_id

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **template_kwargs: Any,
    ) -> str:
        """The prompt text for a conversation. Extra keyword arguments become template variables
        (e.g. enable_thinking=False for Qwen3)."""
        return self.render_template(
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            template_kwargs=template_kwargs,
        )

    def render_template(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
        template: str | None = None,
    ) -> str:
        """apply_chat_template with the template's source given by the caller (`template`), not
        by request data: None is the model's own (its tool-use one when there are tools)."""
        templates = self._files.chat_templates
        source = template or (templates.get("tool_use") if tools else None)
        source = source or templates.get("default")
        if source is None:
            raise InvalidRequestError(
                "this model has no chat template; send a raw prompt to /api/generate "
                '(with "raw": true) or to /v1/completions instead'
            )
        return render_chat_template(
            source,
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            special_tokens=self._special_tokens,
            template_kwargs=template_kwargs or {},
        )

    def get_vocab(self, with_added_tokens: bool = True) -> dict[str, int]:
        vocab: dict[str, int] = self._tk.get_vocab(with_added_tokens=with_added_tokens)
        return vocab

    @property
    def base_vocab_size(self) -> int:
        """The vocabulary without added tokens (what Hugging Face calls vocab_size)."""
        size: int = self._tk.get_vocab_size(with_added_tokens=False)
        return size
