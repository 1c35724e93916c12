"""Reading the Hugging Face tokenizer side files: tokenizer_config.json, generation_config.json
and the chat template files.

tokenizer.json itself is read by the `tokenizers` library in tokenizer.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ember.errors import ModelLoadError

# Names of the special-token entries of tokenizer_config.json that chat templates can read.
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


@dataclass(slots=True)
class AddedTokenSpec:
    """One entry of tokenizer_config.json's `added_tokens_decoder`."""

    id: int
    content: str
    special: bool = True
    lstrip: bool = False
    rstrip: bool = False
    normalized: bool = False
    single_word: bool = False


@dataclass(slots=True)
class TokenizerFiles:
    """What the side files of a model directory say about its tokenizer."""

    special_tokens: dict[str, str] = field(default_factory=dict)  # "bos_token" -> "<s>", ...
    # Template name -> jinja source. A single template is stored under "default".
    chat_templates: dict[str, str] = field(default_factory=dict)
    added_tokens: list[AddedTokenSpec] = field(default_factory=list)
    # From generation_config.json, else config.json.
    eos_token_ids: list[int] = field(default_factory=list)
    bos_token_id: int | None = None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} if the file does not exist."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}; fix or re-download the file") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object; fix or re-download the file")
    return data


def token_content(value: Any) -> str | None:
    """A special token given either as a string or as an AddedToken dict with "content"."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _templates_from_config(value: Any, path: Path) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, list):
        out: dict[str, str] = {}
        for item in value:
            if not (
                isinstance(item, dict)
                and isinstance(item.get("name"), str)
                and isinstance(item.get("template"), str)
            ):
                raise ModelLoadError(
                    f"{path}: each chat_template entry must be {{'name': str, 'template': str}}; "
                    "fix the file"
                )
            out[item["name"]] = item["template"]
        return out
    raise ModelLoadError(f"{path}: chat_template must be a string or a list; fix the file")


def _read_chat_templates(path: Path, config: dict[str, Any]) -> dict[str, str]:
    # Same precedence as transformers: chat_template.jinja, then the legacy chat_template.json,
    # then tokenizer_config.json; additional_chat_templates/*.jinja add named templates.
    templates = _templates_from_config(config.get("chat_template"), path / "tokenizer_config.json")
    legacy = read_json(path / "chat_template.json")
    if "chat_template" in legacy:
        templates = _templates_from_config(legacy["chat_template"], path / "chat_template.json")
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():
        templates = {"default": jinja_file.read_text(encoding="utf-8")}
    extra_dir = path / "additional_chat_templates"
    if extra_dir.is_dir():
        for file in sorted(extra_dir.glob("*.jinja")):
            templates[file.name.removesuffix(".jinja")] = file.read_text(encoding="utf-8")
    return templates


def _read_added_tokens(config: dict[str, Any]) -> list[AddedTokenSpec]:
    out: list[AddedTokenSpec] = []
    for key, value in (config.get("added_tokens_decoder") or {}).items():
        content = token_content(value)
        if content is None or not str(key).isdigit():
            continue
        flags = value if isinstance(value, dict) else {}
        out.append(
            AddedTokenSpec(
                id=int(key),
                content=content,
                special=bool(flags.get("special", True)),
                lstrip=bool(flags.get("lstrip", False)),
                rstrip=bool(flags.get("rstrip", False)),
                normalized=bool(flags.get("normalized", False)),
                single_word=bool(flags.get("single_word", False)),
            )
        )
    return out


def read_tokenizer_files(path: Path) -> TokenizerFiles:
    config = read_json(path / "tokenizer_config.json")
    special: dict[str, str] = {}
    for key in SPECIAL_TOKEN_KEYS:
        content = token_content(config.get(key))
        if content is not None:
            special[key] = content
    generation = read_json(path / "generation_config.json")
    if "eos_token_id" not in generation and "bos_token_id" not in generation:
        generation = read_json(path / "config.json")
    bos_ids = _ids(generation.get("bos_token_id"))
    return TokenizerFiles(
        special_tokens=special,
        chat_templates=_read_chat_templates(path, config),
        added_tokens=_read_added_tokens(config),
        eos_token_ids=_ids(generation.get("eos_token_id")),
        bos_token_id=bos_ids[0] if bos_ids else None,
    )
