"""ember: serve open LLMs on autoscaled GPUs.

The heavy pieces (torch, the engine) are imported lazily so that `import ember` and
`ember --help` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "CompletionOutput",
    "EmbeddingOutput",
    "EmbeddingRequestOutput",
    "Logprob",
    "PoolingOutput",
    "PoolingRequestOutput",
    "RequestOutput",
    "SamplingParams",
    "ScoringOutput",
    "ScoringRequestOutput",
    "__version__",
]

if TYPE_CHECKING:
    from ember.engine.llm import LLM
    from ember.logprobs import Logprob
    from ember.outputs import (
        CompletionOutput,
        EmbeddingOutput,
        EmbeddingRequestOutput,
        PoolingOutput,
        PoolingRequestOutput,
        RequestOutput,
        ScoringOutput,
        ScoringRequestOutput,
    )
    from ember.sampling_params import SamplingParams


def __getattr__(name: str) -> Any:
    if name == "LLM":
        from ember.engine.llm import LLM

        return LLM
    if name == "SamplingParams":
        from ember.sampling_params import SamplingParams

        return SamplingParams
    if name == "Logprob":
        from ember.logprobs import Logprob

        return Logprob
    if name in __all__ and name.endswith("Output"):  # ember/outputs.py
        from ember import outputs

        return getattr(outputs, name)
    raise AttributeError(f"module 'ember' has no attribute {name!r}")
