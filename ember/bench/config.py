"""What one benchmark run does: the server, the workload and the arrival process."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

PromptFormat = Literal["ids", "text"]

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"


class BenchError(Exception):
    """A run that cannot start or go on (bad configuration, unreachable server)."""


@dataclass(slots=True)
class BenchConfig:
    base_url: str = "http://127.0.0.1:11434"
    model: str | None = None  # None: the first model the server lists at /v1/models
    endpoint: str = COMPLETIONS
    dataset: str = "random"
    input_len: int = 1024  # tokens per prompt (the centre of the range)
    output_len: int = 128  # max_tokens per request (the centre of the range)
    range_ratio: float = 0.0  # lengths drawn uniformly from len*(1-r) .. len*(1+r)
    num_prompts: int = 1000
    max_concurrency: int | None = None  # None: no client-side limit
    request_rate: float = math.inf  # requests/s; inf sends everything at once
    burstiness: float = 1.0  # gamma shape of inter-arrival times; 1 is a Poisson process
    ignore_eos: bool = False
    temperature: float = 0.0
    top_k: int | None = None  # sent only when set (vLLM's sampling extras)
    top_p: float | None = None
    seed: int = 0
    api_key: str | None = None
    tokenizer: str | None = None  # dir with tokenizer.json (or the file): vocab for random ids
    prompt_format: PromptFormat | None = None  # None: ids on /v1/completions, text on chat
    percentiles: tuple[float, ...] = (99.0,)
    request_timeout_s: float = 6 * 3600.0
    progress: bool = True  # progress bar on stderr

    @property
    def is_chat(self) -> bool:
        return "chat" in self.endpoint

    @property
    def effective_prompt_format(self) -> PromptFormat:
        if self.prompt_format is not None:
            return self.prompt_format
        return "text" if self.is_chat else "ids"

    def check(self) -> None:
        """Raise BenchError naming the first setting that cannot work."""
        if self.dataset != "random":
            raise BenchError(f"unknown dataset {self.dataset!r}; the one available is 'random'")
        if not self.endpoint.startswith("/"):
            raise BenchError(
                f"endpoint must be a path such as {COMPLETIONS}, not {self.endpoint!r}"
            )
        if self.is_chat and self.prompt_format == "ids":
            raise BenchError(f"token-id prompts need {COMPLETIONS}; chat takes text")
        for name in ("input_len", "output_len", "num_prompts"):
            if getattr(self, name) < 1:
                raise BenchError(f"{name} must be at least 1")
        if not 0.0 <= self.range_ratio < 1.0:
            raise BenchError("range_ratio must be in [0, 1)")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise BenchError("max_concurrency must be at least 1 (or unset for no limit)")
        if not self.request_rate > 0:
            raise BenchError("request_rate must be > 0 (inf sends all requests at once)")
        if not self.burstiness > 0:
            raise BenchError("burstiness must be > 0 (1 is a Poisson process)")
        if any(not 0 < p <= 100 for p in self.percentiles):
            raise BenchError("percentiles must be in (0, 100]")
