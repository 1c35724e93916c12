"""A small YAML writer for manifests: dicts, lists, strings, numbers and booleans only.

Kept here rather than adding PyYAML to ember's runtime dependencies; strings that YAML would read
as something else (numbers, booleans, anything with ':' or '|') are double-quoted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

_PLAIN = re.compile(r"[A-Za-z/][\w./\-]*")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if value is None:
        return "null"
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    return json.dumps(text)


def _lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, Mapping):
        if not value:
            return [pad + "{}"]
        out: list[str] = []
        for key, item in value.items():
            head = f"{pad}{_scalar(key)}:"
            if isinstance(item, Mapping | list | tuple) and item:
                out.append(head)
                out.extend(_lines(item, indent + (0 if isinstance(item, list | tuple) else 2)))
            else:
                out.append(f"{head} {_inline(item)}")
        return out
    if isinstance(value, list | tuple):
        out = []
        for item in value:
            sub = _lines(item, indent + 2)
            out.append(f"{pad}- {sub[0].lstrip()}")
            out.extend(sub[1:])
        return out
    return [pad + _scalar(value)]


def _inline(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list | tuple):
        return "[]"
    return _scalar(value)


def dump(doc: Mapping[str, Any]) -> str:
    return "\n".join(_lines(doc, 0)) + "\n"


def dump_all(docs: Sequence[Mapping[str, Any]]) -> str:
    return "---\n".join(dump(d) for d in docs)
