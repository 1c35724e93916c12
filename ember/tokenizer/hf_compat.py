"""What `LLM.get_tokenizer()` returns: ember's Tokenizer with the surface of a Hugging Face fast
tokenizer that vLLM users call (encode, decode, __call__, apply_chat_template with tokenize,
the special token ids). The defaults are Hugging Face's, not ember's: decode keeps special
tokens, apply_chat_template tokenizes and adds no generation prompt unless asked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, overload

from ember.errors import InvalidRequestError
from ember.tokenizer.chat_prompt import Conversation, as_conversations, render_chat
from ember.tokenizer.tokenizer import Tokenizer


class BatchEncoding(dict[str, Any]):
    """A dict of "input_ids" and "attention_mask" whose keys read as attributes too."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class HFTokenizer:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer  # ember's, as the engine and server use it

    def __getattr__(self, name: str) -> Any:
        # The rest of ember's Tokenizer (eos_token_ids, id_to_token, special_tokens, ...).
        if name == "tokenizer":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.tokenizer, name)

    def __len__(self) -> int:
        return self.tokenizer.vocab_size  # with added tokens, as len() of a HF tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.base_vocab_size

    def _special_id(self, name: str) -> int | None:
        token = self.tokenizer.special_tokens.get(name)
        return None if token is None else self.tokenizer.token_to_id(token)

    @property
    def eos_token_id(self) -> int | None:
        named = self._special_id("eos_token")
        ids = self.tokenizer.eos_token_ids
        return named if named is not None else (ids[0] if ids else None)

    @property
    def bos_token_id(self) -> int | None:
        return self.tokenizer.bos_token_id

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._special_id("unk_token")

    @property
    def pad_token(self) -> str | None:
        return self.tokenizer.special_tokens.get("pad_token")

    @property
    def all_special_ids(self) -> list[int]:
        """The named special tokens' ids (bos, eos, unk, pad, ...), as Hugging Face's; ember's
        Tokenizer.all_special_ids also holds every added special token."""
        named = (self.tokenizer.token_to_id(t) for t in self.tokenizer.special_tokens.values())
        return list(dict.fromkeys(i for i in named if i is not None))

    @property
    def all_special_tokens(self) -> list[str]:
        tokens = (self.tokenizer.id_to_token(i) for i in self.all_special_ids)
        return [t for t in tokens if t is not None]

    def get_vocab(self) -> dict[str, int]:
        return self.tokenizer.get_vocab()

    def encode(self, text: str, add_special_tokens: bool = True, **_: Any) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def __call__(
        self, text: str | Sequence[str], add_special_tokens: bool = True, **_: Any
    ) -> BatchEncoding:
        if isinstance(text, str):
            ids: Any = self.encode(text, add_special_tokens)
            mask: Any = [1] * len(ids)
        else:
            ids = [self.encode(t, add_special_tokens) for t in text]
            mask = [[1] * len(i) for i in ids]
        return BatchEncoding(input_ids=ids, attention_mask=mask)

    def decode(
        self, token_ids: int | Sequence[int], skip_special_tokens: bool = False, **_: Any
    ) -> str:
        ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(
        self, sequences: Sequence[Sequence[int]], skip_special_tokens: bool = False, **_: Any
    ) -> list[str]:
        return [self.decode(s, skip_special_tokens) for s in sequences]

    @overload
    def convert_ids_to_tokens(self, ids: int, skip_special_tokens: bool = False) -> str | None: ...
    @overload
    def convert_ids_to_tokens(
        self, ids: Sequence[int], skip_special_tokens: bool = False
    ) -> list[str | None]: ...
    def convert_ids_to_tokens(
        self, ids: int | Sequence[int], skip_special_tokens: bool = False
    ) -> str | list[str | None] | None:
        if isinstance(ids, int):
            return self.tokenizer.id_to_token(ids)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self.tokenizer.id_to_token(i) for i in ids if i not in special]

    @overload
    def convert_tokens_to_ids(self, tokens: str) -> int | None: ...  # type: ignore[overload-overlap]
    @overload
    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int | None]: ...
    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int | None] | None:
        if isinstance(tokens, str):
            return self._token_id(tokens)
        return [self._token_id(t) for t in tokens]

    def _token_id(self, token: str) -> int | None:
        found = self.tokenizer.token_to_id(token)
        return found if found is not None else self.unk_token_id

    def apply_chat_template(
        self,
        conversation: Conversation | Sequence[Conversation],
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tokenize: bool = True,
        return_dict: bool = False,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """As Hugging Face's: token ids (tokenize=True, the default) or the text; a list of
        conversations gives a list of results."""
        if return_tensors is not None:
            raise InvalidRequestError(
                "return_tensors is not supported; ember's tokenizer returns lists of ids",
                param="return_tensors",
            )
        for name in ("padding", "truncation", "max_length"):
            kwargs.pop(name, None)  # HF's batching options: one conversation needs none
        if documents is not None:
            kwargs["documents"] = documents
        convs, batch = as_conversations(conversation)
        texts = [
            render_chat(
                self.tokenizer,
                c,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                tools=tools,
                template_kwargs=kwargs,
                chat_template=chat_template,
            )
            for c in convs
        ]
        results = [self._shaped(text, tokenize, return_dict) for text in texts]
        return results if batch else results[0]

    def _shaped(self, text: str, tokenize: bool, return_dict: bool) -> Any:
        if not tokenize:
            return text
        # The template writes the special tokens (BOS) itself, as Hugging Face assumes.
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return BatchEncoding(input_ids=ids, attention_mask=[1] * len(ids)) if return_dict else ids
