"""The offline API, shaped like vLLM's: `LLM(model).generate(prompts, SamplingParams(...))`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from ember.engine.args import EngineArgs
from ember.engine.llm_compat import (
    check_vllm_args,
    choose_runner,
    default_sampling_params,
    generation_defaults,
)
from ember.engine.llm_engine import LLMEngine, with_output_kind
from ember.engine.llm_pooling import Pooler, check_pooling_args
from ember.engine.request import Request
from ember.errors import EmberError, InvalidRequestError
from ember.outputs import (
    EmbeddingRequestOutput,
    PoolingOutput,
    PoolingRequestOutput,
    RequestOutput,
    ScoringRequestOutput,
)
from ember.sampling_params import OutputKind, SamplingParams, token_id_list
from ember.tokenizer.chat_prompt import Conversation, as_conversations, render_chat
from ember.tokenizer.hf_compat import HFTokenizer


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]
    prompt: NotRequired[str]  # the text the ids came from, handed back in RequestOutput.prompt


class TextPrompt(TypedDict):
    prompt: str


PromptType = str | TextPrompt | TokensPrompt

# Steps in a row in which the scheduler ran nothing while requests waited: with positive
# budgets (EngineArgs.validate) one step always admits a request, so this is a bug, not load.
MAX_IDLE_STEPS = 1000


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
        tokenizer: str | None = None,
        *,
        dtype: str = "auto",
        device: str = "auto",
        seed: int | None = 0,
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
        generation_config: str = "auto",
        **kwargs: Any,
    ) -> None:
        """The arguments are vLLM's; vLLM's others are taken where they change nothing here
        (trust_remote_code, tensor_parallel_size=1, ...: llm_compat.py) and refused otherwise."""
        check_vllm_args(kwargs)
        model_dir = resolve_model_dir(model)
        _check_tokenizer(tokenizer, model, model_dir)
        # "generate", or "pooling" for an embedding model (embed/encode/score), as vLLM's.
        self.runner_type = choose_runner(kwargs, model, model_dir)
        self.generation_config = generation_config
        self._generation_defaults: dict[str, Any] = {}
        self._ids = itertools.count()
        self._engine: LLMEngine | None = None
        self._pooler: Pooler | None = None
        if self.runner_type == "pooling":
            from ember.engine.embedder import Embedder

            # The engine arguments are about generation (KV cache, graphs): they do not apply.
            self._pooler = Pooler(Embedder(model_dir, device), self._ids)
            return
        args = EngineArgs(
            model=model_dir,
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
        self._engine = LLMEngine(args)
        self._generation_defaults = generation_defaults(
            self._engine.core.args.model, generation_config
        )

    @property
    def engine(self) -> LLMEngine:
        return self._generator("LLM.engine")

    def get_tokenizer(self) -> HFTokenizer:
        """The tokenizer with Hugging Face's methods and defaults (hf_compat.py); ember's own is
        `.tokenizer` on it."""
        if self._pooler is not None:
            return HFTokenizer(self._pooler.embedder.tokenizer)
        return HFTokenizer(self.engine.tokenizer)

    def get_default_sampling_params(self) -> SamplingParams:
        """What generate() and chat() use without SamplingParams: the model's
        generation_config.json defaults (temperature, top_p, top_k, min_p,
        repetition_penalty, max_new_tokens as max_tokens) over vLLM's, as vLLM does."""
        return default_sampling_params(self._generation_defaults)

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
        lora_request: None = None,
        priority: list[int] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt; outputs come back in the order of the prompts. Every
        prompt is checked before any starts, so one bad prompt fails the call and runs nothing."""
        self._generator("LLM.generate()")
        _check_unsupported(lora_request, priority)
        prompt_list = _prompt_list(prompts)
        params_list = self._params_for(len(prompt_list), sampling_params)
        built = [self._request(p, sp) for p, sp in zip(prompt_list, params_list, strict=True)]
        return self._run(built)

    def chat(
        self,
        messages: Conversation | Sequence[Conversation],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
        lora_request: None = None,
        chat_template: str | None = None,
        chat_template_content_format: str = "auto",
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: list[dict[str, Any]] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """One output per conversation; `messages` is one conversation or a list of them.
        `chat_template` replaces the model's; chat_template_kwargs become template variables."""
        tok = self._generator("LLM.chat()").tokenizer
        conversations, _ = as_conversations(messages)
        prompts: list[PromptType] = []
        for conv in conversations:
            text = render_chat(
                tok,
                conv,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                tools=tools,
                template_kwargs=chat_template_kwargs,
                chat_template=chat_template,
            )
            # The template writes BOS itself: encoding must not add a second one (as vLLM).
            ids = tok.encode(text, add_special_tokens=False)
            prompts.append(TokensPrompt(prompt_token_ids=ids))
        return self.generate(prompts, sampling_params, lora_request=lora_request)

    def encode(
        self,
        prompts: PromptType | Sequence[PromptType],
        pooling_params: None = None,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = False,
        lora_request: None = None,
        pooling_task: str | None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[PoolingRequestOutput[PoolingOutput]]:
        """For an embedding model: each prompt's pooled vector as a tensor (`.outputs.data`).
        pooling_task may be left out (it means "embed", as in vLLM before it became required)."""
        pooler = self._pooling("LLM.encode()")
        _check_unsupported(lora_request, None)
        k = check_pooling_args(
            pooling_task, pooling_params, tokenization_kwargs, truncate_prompt_tokens
        )
        return pooler.encode(_prompt_list(prompts), k)

    def embed(
        self,
        prompts: PromptType | Sequence[PromptType],
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = False,
        pooling_params: None = None,
        lora_request: None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[EmbeddingRequestOutput]:
        """For an embedding model: each prompt's embedding (`.outputs.embedding`, a list of
        floats), the vector /v1/embeddings gives for the same input. An input longer than the
        model takes is an error unless truncate_prompt_tokens=-1."""
        pooler = self._pooling("LLM.embed()")
        _check_unsupported(lora_request, None)
        k = check_pooling_args("embed", pooling_params, tokenization_kwargs, truncate_prompt_tokens)
        return pooler.embed(_prompt_list(prompts), k)

    def score(
        self,
        data_1: PromptType | Sequence[PromptType],
        data_2: PromptType | Sequence[PromptType],
        /,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = False,
        pooling_params: None = None,
        lora_request: None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[ScoringRequestOutput]:
        """For an embedding model: the cosine similarity of data_1's and data_2's embeddings,
        pairing 1 with 1, 1 with each of N, or N with N (`.outputs.score`), as vLLM scores with
        embedding models."""
        pooler = self._pooling("LLM.score()")
        _check_unsupported(lora_request, None)
        k = check_pooling_args("embed", pooling_params, tokenization_kwargs, truncate_prompt_tokens)
        return pooler.score(_prompt_list(data_1), _prompt_list(data_2), k)

    def _generator(self, method: str) -> LLMEngine:
        if self._engine is None:
            raise InvalidRequestError(
                f"{method} is only supported for generative models, and this LLM holds an "
                "embedding model: call LLM.embed(), LLM.encode() or LLM.score(), or load a "
                "generative model"
            )
        return self._engine

    def _pooling(self, method: str) -> Pooler:
        if self._pooler is None:
            raise InvalidRequestError(
                f"{method} is only supported for embedding models, and this LLM holds a "
                "generative model: ember embeds with BERT-family encoders, e.g. "
                "LLM('all-minilm') (its vLLM form, runner='pooling', works too)"
            )
        return self._pooler

    def _params_for(
        self, n: int, sampling_params: SamplingParams | Sequence[SamplingParams] | None
    ) -> list[SamplingParams]:
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * n
        params_list = list(sampling_params)
        if len(params_list) != n:
            raise InvalidRequestError(
                f"got {n} prompts but {len(params_list)} sampling params; "
                "pass one SamplingParams or one per prompt"
            )
        bad = next((p for p in params_list if not isinstance(p, SamplingParams)), None)
        if bad is not None:
            raise InvalidRequestError(f"sampling_params must be SamplingParams, got {bad!r}")
        return params_list

    def _request(self, prompt: Any, params: SamplingParams) -> tuple[Request, str | None]:
        """A validated request (nothing is added to the engine yet) and its prompt text."""
        text, token_ids = self._tokenize(prompt)
        params = with_output_kind(params, OutputKind.FINAL_ONLY)
        return self.engine.make_request(str(next(self._ids)), token_ids, params), text

    def _run(self, built: list[tuple[Request, str | None]]) -> list[RequestOutput]:
        ids: list[str] = []
        done: dict[str, RequestOutput] = {}
        try:
            for req, text in built:
                self.engine.add(req, text)
                ids.append(req.request_id)
            idle = 0
            while self.engine.has_unfinished():
                outs = self.engine.step()
                for out in outs:
                    if out.finished:
                        done[out.request_id] = out
                idle = 0 if outs or self.engine.has_running() else idle + 1
                if idle > MAX_IDLE_STEPS:
                    raise self._stalled()
        except BaseException:
            self.engine.abort(ids)
            raise
        return [done[rid] for rid in ids]

    def _stalled(self) -> EmberError:
        s = self.engine.core.scheduler
        return EmberError(
            f"the scheduler ran nothing for {MAX_IDLE_STEPS} steps while {len(s.waiting)} "
            f"requests waited (max_num_batched_tokens={s.max_num_batched_tokens}, "
            f"max_num_seqs={s.max_num_seqs}); the requests were aborted. This is a bug in "
            "ember; please report it with these numbers"
        )

    def _tokenize(self, prompt: Any) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.engine.encode_prompt(prompt)
        if not isinstance(prompt, dict):
            raise InvalidRequestError(
                "a prompt must be a string, {'prompt': '...'} or {'prompt_token_ids': [...]}, "
                f"got {type(prompt).__name__}",
                param="prompt",
            )
        if prompt.get("multi_modal_data") is not None:
            raise InvalidRequestError(
                "multi_modal_data is not supported: ember serves text-only models",
                param="multi_modal_data",
            )
        text = prompt.get("prompt")
        if "prompt_token_ids" in prompt:
            return text, token_id_list("prompt_token_ids", prompt["prompt_token_ids"], "prompt")
        if isinstance(text, str):
            return text, self.engine.encode_prompt(text)
        raise InvalidRequestError(
            "a prompt dict needs 'prompt' (a string) or 'prompt_token_ids' (a list of ints)",
            param="prompt",
        )


def _prompt_list(prompts: Any) -> list[Any]:
    """One prompt (a string or a dict) or a sequence of them, as a list."""
    return [prompts] if isinstance(prompts, str | dict) else list(prompts)


def _check_tokenizer(tokenizer: str | None, model: str, model_dir: str) -> None:
    """ember uses the model's own tokenizer files; naming the model's own is fine."""
    if tokenizer is None or tokenizer in (model, model_dir):
        return
    same = Path(tokenizer).expanduser().is_dir() and (
        Path(tokenizer).expanduser().resolve() == Path(model_dir).expanduser().resolve()
    )
    if not same:
        raise InvalidRequestError(
            f"tokenizer={tokenizer!r} differs from the model; ember uses the tokenizer files in "
            "the model's folder: copy tokenizer.json and tokenizer_config.json there instead",
            param="tokenizer",
        )


def _check_unsupported(lora_request: Any, priority: list[int] | None) -> None:
    if lora_request is not None:
        raise InvalidRequestError("LoRA adapters are not supported", param="lora_request")
    if priority is not None and any(priority):
        raise InvalidRequestError(
            "priority scheduling is not supported: ember serves requests in arrival order",
            param="priority",
        )
