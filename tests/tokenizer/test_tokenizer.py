from __future__ import annotations

import json
from pathlib import Path

import pytest

from ember.errors import ModelLoadError
from ember.tokenizer import Tokenizer
from tests.tokenizer.tokenizer_builders import MakeModelDir, load_transformers_tokenizer

TEXTS = [
    "Hello world",
    "The miller counts 12,345 sacks of grain.",
    "  leading spaces, trailing   ",
    "Café crème brûlée for the naïve señor",
    "東京は日本の首都です。서울은 한국의 수도입니다.",
    "Emoji 😀🚀 👍🏽 🇫🇷 and unknown ☃ glyphs",
    "def add(a, b):\n\treturn a + b\n\n",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_transformers(any_tokenizer_dir: Path, text: str) -> None:
    ours = Tokenizer.from_dir(any_tokenizer_dir)
    theirs = load_transformers_tokenizer(any_tokenizer_dir)
    for add_special in (True, False):
        ids = ours.encode(text, add_special_tokens=add_special)
        assert ids == theirs(text, add_special_tokens=add_special)["input_ids"]
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(
                ids, skip_special_tokens=skip
            )


def test_special_tokens_from_config_and_generation_config(byte_level_dir: Path) -> None:
    tk = Tokenizer.from_dir(byte_level_dir)
    bos, eot, end = (
        tk.token_to_id(t) or -1 for t in ("<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>")
    )
    assert -1 not in (bos, eot, end)
    assert tk.bos_token == "<|begin_of_text|>"
    assert tk.eos_token == "<|end_of_text|>"  # given as an AddedToken dict
    assert tk.bos_token_id == bos
    assert tk.eos_token_ids == [eot, end]
    assert tk.encode("hi")[0] == bos
    assert tk.id_to_token(eot) == "<|eot_id|>"
    assert tk.id_to_token(10**6) is None
    specials = {tk.token_to_id(t) for t in ("<|start_header_id|>", "<|end_header_id|>")}
    assert {bos, eot, end} | specials <= tk.all_special_ids
    theirs = load_transformers_tokenizer(byte_level_dir)
    assert tk.vocab_size == len(theirs)
    assert tk.decode([bos, *tk.encode("hi", add_special_tokens=False), eot]) == "hi"


def test_eos_ids_are_the_union_of_both_files(sentencepiece_dir: Path) -> None:
    tk = Tokenizer.from_dir(sentencepiece_dir)
    assert tk.eos_token_ids == [tk.token_to_id("<|endoftext|>"), tk.token_to_id("<|im_end|>")]
    assert tk.bos_token is None
    assert tk.bos_token_id is None
    assert tk.special_tokens["pad_token"] == "<|endoftext|>"


def test_eos_falls_back_to_config_json(model_dir_with: MakeModelDir, byte_level_dir: Path) -> None:
    path: Path = model_dir_with({}, {"config.json": json.dumps({"eos_token_id": 3})})
    tk = Tokenizer.from_dir(path)
    assert tk.eos_token_ids == [3]
    assert tk.eos_token is None


def test_added_tokens_decoder_adds_missing_tokens(model_dir_with: MakeModelDir) -> None:
    base = Tokenizer.from_dir(model_dir_with({}))
    new_id = base.vocab_size
    config = {
        "added_tokens_decoder": {
            str(new_id): {"content": "<|tool|>", "special": True, "lstrip": False},
            "0": {"content": "ignored: id 0 exists", "special": True},
        }
    }
    tk = Tokenizer.from_dir(model_dir_with(config))
    assert tk.vocab_size == new_id + 1
    assert tk.token_to_id("<|tool|>") == new_id
    assert tk.encode("a<|tool|>b", add_special_tokens=False)[1] == new_id
    assert new_id in tk.all_special_ids
    assert tk.decode([new_id]) == ""


def test_missing_tokenizer_json_says_how_to_make_one(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="save_pretrained"):
        Tokenizer.from_dir(tmp_path)


def test_an_empty_folder_is_not_a_model_and_needs_no_tokenizer_recipe(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a model folder") as info:
        Tokenizer.from_dir(tmp_path)
    assert "AutoTokenizer" not in info.value.message


def test_corrupt_files_raise_model_load_error(model_dir_with: MakeModelDir) -> None:
    path: Path = model_dir_with({})
    (path / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelLoadError, match=r"tokenizer_config\.json"):
        Tokenizer.from_dir(path)
    (path / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    (path / "tokenizer.json").write_text('{"version": "1.0"}', encoding="utf-8")
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        Tokenizer.from_dir(path)
