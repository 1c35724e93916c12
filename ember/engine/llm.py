"""The offline API, shaped like vLLM's: `LLM(model).generate(prompts, SamplingParams(...))`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

from ember.engine.args import EngineArgs
from ember.engine.llm_engine import LLMEngine, with_output_kind
from ember.errors import InvalidRequestError
from ember.outputs import RequestOutput
from ember.sampling_params import OutputKind, SamplingParams
from ember.tokenizer import Tokenizer


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]


PromptType = str | TokensPrompt


def resolve_model_dir(model: str) -> str:
    """A directory or a source URI (s3://, gs://, http(s)://, hf://, file://) is used as it is;
    anything else is a name in the local model store."""
    from ember.registry.remote import is_uri

    if is_uri(model):
        return model
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser())
    from ember.registry import ModelStore, default_home

    return str(ModelStore(default_home()).resolve(model).path)


class LLM:
    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        device: str = "auto",
        seed: int = 0,
        max_model_len: int | None = None,
        max_num_seqs: int = 64,
        max_num_batched_tokens: int | None = None,
        block_size: int = 16,
        enable_prefix_caching: bool = True,
        num_kv_blocks: int | None = None,
        kv_cache_memory_gb: float = 1.0,
        kv_cache_dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        load_format: str = "auto",
        enforce_eager: bool = False,
        async_scheduling: bool | None = None,
        capture_all_graphs: bool = False,
    ) -> None:
        args = EngineArgs(
            model=resolve_model_dir(model),
            dtype=dtype,
            device=device,
            seed=seed,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            block_size=block_size,
            enable_prefix_caching=enable_prefix_caching,
            num_kv_blocks=num_kv_blocks,
            kv_cache_memory_gb=kv_cache_memory_gb,
            kv_cache_dtype=kv_cache_dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            load_format=load_format,
            enforce_eager=enforce_eager,
            async_scheduling=async_scheduling,
            capture_all_graphs=capture_all_graphs,
        )
        self.engine = LLMEngine(args)
        self._ids = itertools.count()

    def get_tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Generate for every prompt; outputs come back in the order of the prompts."""
        if isinstance(prompts, str | dict):
            prompts = [prompts]  # type: ignore[list-item]
        prompt_list = list(prompts)  # type: ignore[arg-type]
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompt_list)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompt_list):
                raise InvalidRequestError(
                    f"got {len(prompt_list)} prompts but {len(params_list)} sampling params; "
                    "pass one SamplingParams or one per prompt"
                )
        ids: list[str] = []
        try:
            for prompt, params in zip(prompt_list, params_list, strict=True):
                text, token_ids = self._tokenize(prompt)
                rid = str(next(self._ids))
                self.engine.add_request(
                    rid, token_ids, with_output_kind(params, OutputKind.FINAL_ONLY), text
                )
                ids.append(rid)
            done: dict[str, RequestOutput] = {}
            while self.engine.has_unfinished():
                for out in self.engine.step():
                    if out.finished:
                        done[out.request_id] = out
        except BaseException:
            self.engine.abort(ids)
            raise
        return [done[rid] for rid in ids]

    def chat(
        self,
        messages: list[dict[str, Any]],
        sampling_params: SamplingParams | None = None,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        text = self.engine.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt
        )
        ids = self.engine.tokenizer.encode(text, add_special_tokens=False)
        return self.generate([TokensPrompt(prompt_token_ids=ids)], sampling_params)

    def _tokenize(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.engine.encode_prompt(prompt)
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            return None, list(prompt["prompt_token_ids"])
        raise InvalidRequestError(
            "a prompt must be a string or {'prompt_token_ids': [...]}", param="prompt"
        )
