"""vLLM's `LLM(...)` arguments that ember takes without needing them, and the model's default
sampling parameters from generation_config.json, as vLLM reads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ember.errors import InvalidRequestError
from ember.sampling_params import SamplingParams
from ember.tokenizer.files import read_json

# Accepted with any value: they change nothing ember does (ember runs no remote code, keeps no
# stats log, swaps nothing to the CPU, always chunks prefills and captures decode graphs).
IGNORED_ARGS = frozenset(
    {
        "trust_remote_code",
        "disable_log_stats",
        "swap_space",
        "disable_custom_all_reduce",
        "max_seq_len_to_capture",
        "disable_async_output_proc",
        "enable_chunked_prefill",
        "compilation_config",
        "hf_token",
        "allowed_local_media_path",
        "distributed_executor_backend",
    }
)

_TASKS = "ember generates text, or embeds with BERT-family encoders (task='embed')"

# Accepted only with the values that mean what ember does; anything else is a clear error.
ONLY_VALUES: dict[str, tuple[tuple[Any, ...], str]] = {
    "tensor_parallel_size": ((1,), "ember runs a model on one GPU; pick a GPU with enough memory"),
    "pipeline_parallel_size": ((1,), "ember runs a model on one GPU"),
    "data_parallel_size": ((1,), "run one LLM per GPU instead"),
    "quantization": (
        (None,),
        "ember reads a checkpoint's quantization from its config.json (FP8 checkpoints load "
        "dequantized to bfloat16; other methods are refused)",
    ),
    "revision": ((None,), "name the revision in the model URI instead: hf://org/name@revision"),
    "tokenizer_revision": ((None,), "ember uses the tokenizer files of the model's revision"),
    "tokenizer_mode": (("auto",), "ember always uses the model's tokenizer.json"),
    "skip_tokenizer_init": ((False,), "ember needs the tokenizer"),
    "cpu_offload_gb": ((0,), "ember keeps all weights on the device"),
    "enable_lora": ((False, None), "LoRA adapters are not supported"),
    "hf_overrides": ((None,), "edit the model's config.json instead"),
    "task": (("auto", "generate", "embed"), _TASKS),
    "runner": (("auto", "generate", "pooling"), _TASKS),
}

# task / runner values and the runner they ask for.
_RUNNERS = {"generate": "generate", "embed": "pooling", "pooling": "pooling"}


def check_vllm_args(kwargs: dict[str, Any]) -> None:
    """Raise for arguments ember does not know (a TypeError, as vLLM's EngineArgs would) and
    for known ones with values ember cannot honour."""
    unknown = sorted(k for k in kwargs if k not in IGNORED_ARGS and k not in ONLY_VALUES)
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise TypeError(f"LLM() got unexpected keyword arguments: {names}")
    for name, value in kwargs.items():
        if name not in ONLY_VALUES:
            continue
        allowed, hint = ONLY_VALUES[name]
        if not any(_same(value, ok) for ok in allowed):
            shown = " or ".join(repr(v) for v in allowed)
            raise InvalidRequestError(
                f"{name}={value!r} is not supported (only {shown}): {hint}", param=name
            )


def choose_runner(kwargs: dict[str, Any], model: str, model_dir: str) -> str:
    """ "generate" or "pooling", as vLLM's runner: what task/runner ask for (checked by
    check_vllm_args), else what the model is; a BERT-family encoder is an embedding model
    (as vLLM's runner="auto" picks pooling for it), anything else generates."""
    from ember.models.bert import is_bert_dir

    asked = {_RUNNERS[v] for v in (kwargs.get("task"), kwargs.get("runner")) if v in _RUNNERS}
    if len(asked) > 1:
        raise InvalidRequestError(
            f"task={kwargs.get('task')!r} and runner={kwargs.get('runner')!r} disagree; pass "
            "one of them",
            param="runner",
        )
    encoder = Path(model_dir).is_dir() and is_bert_dir(Path(model_dir))
    if asked == {"pooling"} and not encoder:
        raise InvalidRequestError(
            f"runner='pooling' needs an embedding model, and '{model}' is not one: ember embeds "
            "with BERT-family encoders (e.g. all-minilm, from a folder or the model store), not "
            "by pooling a generative model's states",
            param="runner",
        )
    if asked == {"generate"} and encoder:
        raise InvalidRequestError(
            f"'{model}' is an embedding model (BERT family) and cannot generate text; leave "
            "task/runner out (or pass runner='pooling') and call LLM.embed()",
            param="runner",
        )
    return "pooling" if encoder else "generate"


def _same(value: Any, allowed: Any) -> bool:
    """value == allowed, without True passing for 1 or 1 for True."""
    return bool(value == allowed) and isinstance(value, bool) == isinstance(allowed, bool)


# generation_config.json keys vLLM takes as default sampling parameters, by SamplingParams name.
_GENERATION_KEYS = {
    "repetition_penalty": "repetition_penalty",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "max_new_tokens": "max_tokens",
}


def generation_defaults(model_dir: str, generation_config: str) -> dict[str, Any]:
    """The model's recommended sampling parameters, as vLLM's get_diff_sampling_param:
    "auto" reads the model's generation_config.json, "vllm" uses none, and any other value is
    a folder holding a generation_config.json."""
    if generation_config == "vllm":
        return {}
    folder = Path(model_dir) if generation_config == "auto" else Path(generation_config)
    if generation_config != "auto" and not (folder / "generation_config.json").is_file():
        raise InvalidRequestError(
            f"generation_config must be 'auto', 'vllm' or a folder holding a "
            f"generation_config.json; {generation_config!r} is none of them",
            param="generation_config",
        )
    config = read_json(folder / "generation_config.json")
    return {ours: config[k] for k, ours in _GENERATION_KEYS.items() if config.get(k) is not None}


def default_sampling_params(defaults: dict[str, Any]) -> SamplingParams:
    try:
        return SamplingParams(**defaults)
    except InvalidRequestError as e:
        raise InvalidRequestError(
            f"the model's generation_config.json has a bad default: {e.message}; fix the file "
            "or pass generation_config='vllm'",
            param=e.param,
        ) from None
