"""The embedding path: an encoder model (models/bert.py) and its tokenizer, run on padded
batches. Generative models are not embedded (the API answers 400): ember's engine keeps no
hidden states, and mean-pooled decoder states make poor embeddings anyway."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from ember.errors import InvalidRequestError

BATCH = 32  # inputs per forward pass


@dataclass(slots=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


class Embedder:
    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        import torch

        from ember.models.bert import load_bert
        from ember.tokenizer import Tokenizer

        self._torch = torch
        self.model = load_bert(path, device if device != "auto" else "cpu")
        self.tokenizer = Tokenizer.from_dir(path)
        self.max_len = self.model.cfg.max_seq_length
        self.dimensions = self.model.cfg.hidden_size
        self._lock = threading.Lock()  # one forward pass at a time on the shared model

    def tokenize(
        self, text: str, truncate: bool, how_to_truncate: str = "set truncate to true"
    ) -> list[int]:
        """The input's token ids; one too long for the model is cut (keeping its closing
        [SEP]) if `truncate`, else refused with a message that says `how_to_truncate`."""
        ids = self.tokenizer.encode(text)
        if len(ids) <= self.max_len:
            return ids
        if not truncate:
            raise InvalidRequestError(
                f"the input is {len(ids)} tokens long but this model takes at most "
                f"{self.max_len}; shorten it or {how_to_truncate}",
                param="input",
            )
        return ids[: self.max_len - 1] + ids[-1:]  # keep the closing [SEP]

    def truncation(self, k: object) -> bool:
        """Whether vLLM's truncate_prompt_tokens `k` asks for inputs to be cut: None keeps them
        whole (one too long is an error); -1 cuts them to the model's limit, as does any k at or
        above it. ember cuts nowhere else (a prefix of an encoder's input is not what its
        pooling was trained on), so a smaller k is refused, not ignored."""
        if k is None:
            return False
        if isinstance(k, bool) or not isinstance(k, int) or k == 0 or k < -1:
            raise InvalidRequestError(
                f"truncate_prompt_tokens must be -1 or a positive integer, got {k!r}",
                param="truncate_prompt_tokens",
            )
        if k != -1 and k < self.max_len:
            raise InvalidRequestError(
                f"truncate_prompt_tokens={k} is not supported: ember cuts an input only to "
                f"the model's limit of {self.max_len} tokens; pass -1 for that",
                param="truncate_prompt_tokens",
            )
        return True

    def check_ids(self, ids: list[int]) -> None:
        """Token ids given as the input, not tokenized here: as many as the model takes, all
        in its vocabulary."""
        vocab = self.tokenizer.vocab_size
        if not ids or len(ids) > self.max_len or not all(0 <= t < vocab for t in ids):
            raise InvalidRequestError(
                f"each input must be 1 to {self.max_len} tokens of this model's vocabulary",
                param="input",
            )

    def embed_ids(self, batch: list[list[int]]) -> Embeddings:
        """Embeddings of already tokenized inputs, in order (blocking: call from a thread)."""
        torch = self._torch
        vectors: list[list[float]] = []
        pad = self.model.cfg.pad_token_id
        device = self.model.word.weight.device
        with self._lock:
            for start in range(0, len(batch), BATCH):
                part = batch[start : start + BATCH]
                width = max(len(ids) for ids in part)
                ids = torch.tensor([i + [pad] * (width - len(i)) for i in part], device=device)
                mask = torch.tensor(
                    [[1] * len(i) + [0] * (width - len(i)) for i in part], device=device
                )
                vectors += self.model.embed(ids, mask).float().tolist()
        return Embeddings(vectors, sum(len(i) for i in batch))

    def embed(self, texts: list[str], truncate: bool = True) -> Embeddings:
        return self.embed_ids([self.tokenize(t, truncate) for t in texts])
