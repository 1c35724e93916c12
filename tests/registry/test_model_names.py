from __future__ import annotations

import pytest

from ember.errors import InvalidRequestError
from ember.registry import ModelName, parse_name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tiny", "tiny:latest"),
        ("tiny:latest", "tiny:latest"),
        ("  Tiny:LATEST ", "tiny:latest"),
        ("llama3.2:1b", "llama3.2:1b"),
        ("library/llama3.2:1b", "llama3.2:1b"),
        ("qwen/qwen2.5:0.5b-instruct", "qwen/qwen2.5:0.5b-instruct"),
        ("my_org/model-x", "my_org/model-x:latest"),
        ("a:_draft", "a:_draft"),
        ("registry.ollama.ai/library/tiny:latest", "tiny:latest"),
        ("Registry.Ollama.AI/library/tiny", "tiny:latest"),
        ("localhost:5000/qwen/qwen2.5:0.5b", "qwen/qwen2.5:0.5b"),
    ],
)
def test_names_normalise_like_ollama(text: str, expected: str) -> None:
    assert str(parse_name(text)) == expected


def test_name_parts_and_storage_path() -> None:
    name = parse_name("qwen/qwen2.5:0.5b")
    assert name == ModelName(model="qwen2.5", tag="0.5b", namespace="qwen")
    assert name.relpath.as_posix() == "qwen/qwen2.5/0.5b"
    assert parse_name("tiny").relpath.as_posix() == "tiny/latest"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        ":",
        "tiny:",
        ":latest",
        "a b",
        "a/b/c",
        "registry.ollama.ai/a/b/c",
        "registry.ollama.ai:x/library/tiny",
        "../x",
        "x:../y",
        "-a",
        ".hidden",
        "a:b:c",
        "a/",
        "/a",
        "モデル",
        "a" * 81,
        "x:" + "t" * 81,
        "a\\b",
    ],
)
def test_invalid_names_are_rejected(text: str) -> None:
    with pytest.raises(InvalidRequestError, match="invalid model name") as info:
        parse_name(text)
    assert info.value.status_code == 400
    assert "[namespace/]model[:tag]" in info.value.message


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/models/Llama-3.1-8B", "llama-3.1-8b:latest"),
        ("s3://bucket/models/qwen2.5-7b/", "qwen2.5-7b:latest"),
        ("gs://bucket", "bucket:latest"),
        ("hf://org/Name@v1.0", "name:latest"),
        ("hf://org/name@refs/pr/1", "name:latest"),  # the revision, not its last part
        ("http://127.0.0.1:8000/", "127.0.0.1-8000:latest"),  # a model at a server's root
        ("https://host/m/tiny?sig=abc", "tiny:latest"),
        ("http://host/m/_tiny model_", "tiny-model_:latest"),
    ],
)
def test_a_uri_gives_a_valid_default_name(uri: str, expected: str) -> None:
    """`ember pull URI` and `ember serve URI` name the model after the URI; the name is always
    one the store takes (a root URL's host:port made one)."""
    from ember.registry.remote import default_name

    assert default_name(uri) == expected
    assert str(parse_name(default_name(uri))) == expected
