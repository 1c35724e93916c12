"""Fixtures: model directories holding the tokenizers of tokenizer_builders.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.tokenizer.tokenizer_builders import (
    CHATML_TEMPLATE,
    LLAMA3_TEMPLATE,
    MakeModelDir,
    build_byte_fallback,
    build_byte_level,
    build_sentencepiece,
    write_model_dir,
)


@pytest.fixture(scope="session")
def byte_level_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    backend = build_byte_level()
    eot = backend.token_to_id("<|eot_id|>")
    end = backend.token_to_id("<|end_of_text|>")
    return write_model_dir(
        tmp_path_factory.mktemp("byte_level"),
        backend,
        {
            "bos_token": "<|begin_of_text|>",
            "eos_token": {"content": "<|end_of_text|>", "special": True, "__type": "AddedToken"},
            "chat_template": LLAMA3_TEMPLATE,
            "clean_up_tokenization_spaces": False,
        },
        {"bos_token_id": backend.token_to_id("<|begin_of_text|>"), "eos_token_id": [eot, end]},
    )


@pytest.fixture(scope="session")
def sentencepiece_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    backend = build_sentencepiece()
    return write_model_dir(
        tmp_path_factory.mktemp("sentencepiece"),
        backend,
        {
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "chat_template": CHATML_TEMPLATE,
            "clean_up_tokenization_spaces": False,
        },
        {"eos_token_id": backend.token_to_id("<|endoftext|>")},
    )


@pytest.fixture(scope="session")
def byte_fallback_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    backend = build_byte_fallback()
    return write_model_dir(
        tmp_path_factory.mktemp("byte_fallback"),
        backend,
        {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "chat_template": CHATML_TEMPLATE,
            "clean_up_tokenization_spaces": False,
        },
        {},
    )


@pytest.fixture(scope="session", params=["byte_level", "sentencepiece", "byte_fallback"])
def any_tokenizer_dir(request: pytest.FixtureRequest) -> Path:
    path: Path = request.getfixturevalue(f"{request.param}_dir")
    return path


@pytest.fixture
def model_dir_with(tmp_path: Path, byte_level_dir: Path) -> MakeModelDir:
    """Factory: a copy of the byte-level tokenizer with the given tokenizer_config.json and extra
    files ({relative path: text})."""

    def make(config: dict[str, Any], files: dict[str, str] | None = None) -> Path:
        path = tmp_path / "model"
        path.mkdir(exist_ok=True)
        (path / "tokenizer.json").write_bytes((byte_level_dir / "tokenizer.json").read_bytes())
        (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
        for name, text in (files or {}).items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_text(text, encoding="utf-8")
        return path

    return make
