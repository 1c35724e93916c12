"""Loading from a model directory: the errors a user sees, and dtype/device choices."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from ember.errors import ModelLoadError
from ember.loader import iter_safetensors, safetensors_files
from ember.models import ModelConfig, load_model, resolve_dtype

from .helpers import TINY_LLAMA

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untied Llama saved with transformers (single model.safetensors)."""
    cfg = transformers.LlamaConfig(**TINY_LLAMA)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(path))
    return path


@pytest.fixture
def model_dir(saved: Path, tmp_path: Path) -> Path:
    """A private copy of the saved model that a test may break."""
    return Path(shutil.copytree(saved, tmp_path / "model"))


def _edit_weights(model_dir: Path, edit: dict[str, torch.Tensor | None]) -> None:
    path = model_dir / "model.safetensors"
    tensors = load_file(str(path))
    for name, tensor in edit.items():
        if tensor is None:
            del tensors[name]
        else:
            tensors[name] = tensor
    save_file(tensors, str(path), metadata={"format": "pt"})


def _edit_config(model_dir: Path, **changes: object) -> None:
    path = model_dir / "config.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def test_loads_and_is_in_eval_mode(model_dir: Path) -> None:
    model = load_model(model_dir, torch.float32, CPU)
    assert not model.training
    assert model.config.architecture == "LlamaForCausalLM"
    assert next(model.parameters()).dtype == torch.float32


def test_loads_in_bfloat16(model_dir: Path) -> None:
    model = load_model(str(model_dir), torch.bfloat16, CPU)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32  # restored after building


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no config\.json in"):
        load_model(tmp_path, torch.float32, CPU)


def test_unsupported_architecture(model_dir: Path) -> None:
    _edit_config(model_dir, architectures=["FooForCausalLM"])
    expected = (
        "architecture 'FooForCausalLM' is not supported; supported: Gemma2ForCausalLM, "
        "Gemma3ForCausalLM, Gemma3ForConditionalGeneration, LlamaForCausalLM, "
        "MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"
    )
    with pytest.raises(ModelLoadError) as info:
        load_model(model_dir, torch.float32, CPU)
    assert str(info.value) == expected


def test_missing_tensor_is_named(model_dir: Path) -> None:
    _edit_weights(model_dir, {"model.layers.1.self_attn.k_proj.weight": None})
    with pytest.raises(
        ModelLoadError, match=r"missing tensor 'model\.layers\.1\.self_attn\.k_proj"
    ):
        load_model(model_dir, torch.float32, CPU)


def test_wrong_shape_is_named(model_dir: Path) -> None:
    _edit_weights(model_dir, {"model.layers.0.mlp.up_proj.weight": torch.zeros(47, 32)})
    with pytest.raises(
        ModelLoadError,
        match=r"'model\.layers\.0\.mlp\.up_proj\.weight' in '.*model\.safetensors' has shape "
        r"\[47, 32\] but the model built from config\.json expects \[",
    ):
        load_model(model_dir, torch.float32, CPU)


def test_unexpected_tensor_is_named(model_dir: Path) -> None:
    _edit_weights(model_dir, {"model.layers.0.self_attn.extra.weight": torch.zeros(2)})
    with pytest.raises(ModelLoadError, match=r"'model\.layers\.0\.self_attn\.extra\.weight'"):
        load_model(model_dir, torch.float32, CPU)


def test_absent_lm_head_is_tied_to_embeddings(model_dir: Path) -> None:
    _edit_weights(model_dir, {"lm_head.weight": None})
    model = load_model(model_dir, torch.float32, CPU)
    assert model.get_submodule("lm_head").weight is model.get_submodule("model.embed_tokens").weight


def test_rotary_inv_freq_in_checkpoint_is_ignored(model_dir: Path) -> None:
    _edit_weights(model_dir, {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(4)})
    load_model(model_dir, torch.float32, CPU)


def test_no_weights(model_dir: Path) -> None:
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors weights in"):
        load_model(model_dir, torch.float32, CPU)


def test_missing_shard(model_dir: Path) -> None:
    index = {
        "metadata": {},
        "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "lm_head.weight": "model-00002-of-00002.safetensors",
        },
    }
    (model_dir / "model.safetensors").rename(model_dir / "model-00001-of-00002.safetensors")
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"model-00002-of-00002\.safetensors listed in"):
        load_model(model_dir, torch.float32, CPU)


def test_unindexed_safetensors_files_are_all_read(model_dir: Path) -> None:
    tensors = load_file(str(model_dir / "model.safetensors"))
    head = {"lm_head.weight": tensors.pop("lm_head.weight")}
    save_file(tensors, str(model_dir / "a.safetensors"))
    save_file(head, str(model_dir / "b.safetensors"))
    (model_dir / "model.safetensors").unlink()
    assert [p.name for p in safetensors_files(model_dir)] == ["a.safetensors", "b.safetensors"]
    assert dict(iter_safetensors(model_dir)).keys() == tensors.keys() | head.keys()


def test_corrupt_weights_file(model_dir: Path) -> None:
    (model_dir / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match=r"cannot read weights from"):
        load_model(model_dir, torch.float32, CPU)


def test_resolve_dtype(saved: Path) -> None:
    config = ModelConfig.from_dir(saved)
    config.dtype = "bfloat16"
    cuda = torch.device("cuda")
    assert resolve_dtype("auto", config, CPU) == torch.float32
    assert resolve_dtype("auto", config, cuda) == torch.bfloat16
    config.dtype = "float16"
    assert resolve_dtype("auto", config, cuda) == torch.float16
    assert resolve_dtype("bfloat16", config, CPU) == torch.bfloat16
    assert resolve_dtype("float32", config, cuda) == torch.float32
    config.dtype = "float32"
    assert resolve_dtype("auto", config, cuda) == torch.bfloat16
    with pytest.raises(ModelLoadError, match="dtype 'int8' is not supported"):
        resolve_dtype("int8", config, CPU)


def test_a_function_runs_beside_the_load_on_the_allocated_model(saved: Path) -> None:
    """`alongside` sees the model being loaded (its parameters allocated) on another thread,
    and has finished by the time load_model returns the loaded weights."""
    import threading

    seen: list[tuple[object, str, int]] = []

    def beside(model: torch.nn.Module) -> None:
        params = sum(p.numel() for p in model.parameters())
        seen.append((model, threading.current_thread().name, params))

    model = load_model(saved, torch.float32, CPU, alongside=beside)
    assert len(seen) == 1
    assert seen[0][0] is model and seen[0][1] != threading.current_thread().name
    assert seen[0][2] == sum(p.numel() for p in model.parameters())
    expected = load_file(str(saved / "model.safetensors"))["model.embed_tokens.weight"]
    assert torch.equal(model.state_dict()["model.embed_tokens.weight"], expected)


def test_what_runs_beside_the_load_is_joined_and_its_error_raised(
    saved: Path, model_dir: Path
) -> None:
    import threading

    done = threading.Event()

    def fails(model: torch.nn.Module) -> None:
        done.set()
        raise RuntimeError("kernel warm-up failed")

    with pytest.raises(RuntimeError, match="kernel warm-up failed"):
        load_model(saved, torch.float32, CPU, alongside=fails)
    # A failing load still waits for it, and raises the load's own error.
    _edit_weights(model_dir, {"model.layers.1.self_attn.k_proj.weight": None})
    finished: list[bool] = []

    def slow(model: torch.nn.Module) -> None:
        done.wait(timeout=5)
        finished.append(True)

    with pytest.raises(ModelLoadError, match="missing tensor"):
        load_model(model_dir, torch.float32, CPU, alongside=slow)
    assert finished == [True]


def test_the_gil_changes_hands_quickly_while_the_weights_stream(
    saved: Path, model_dir: Path
) -> None:
    """The kernels' warm-up runs Python beside the stream, whose reads and copies each need the
    GIL briefly: during the load a waiting thread gets it within LOAD_SWITCH_INTERVAL, and
    Python's own interval is back afterwards, after a failed load too."""
    import sys

    from ember.models.loader import LOAD_SWITCH_INTERVAL

    before = sys.getswitchinterval()
    seen: list[float] = []
    load_model(saved, torch.float32, CPU, alongside=lambda m: seen.append(sys.getswitchinterval()))
    assert seen == [pytest.approx(min(before, LOAD_SWITCH_INTERVAL))]
    assert sys.getswitchinterval() == before
    _edit_weights(model_dir, {"model.layers.1.self_attn.k_proj.weight": None})
    with pytest.raises(ModelLoadError, match="missing tensor"):
        load_model(model_dir, torch.float32, CPU)
    assert sys.getswitchinterval() == before
