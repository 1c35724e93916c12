"""The part of Ollama's Modelfile that ember's store can honour: FROM, SYSTEM, TEMPLATE and
PARAMETER (values in quotes or triple quotes, `#` comments). Other instructions are refused by
name, so a user learns what was ignored rather than getting a different model. write_modelfile
is the other way, for /api/show."""

from __future__ import annotations

import json
import re
from typing import Any

from ember.errors import InvalidRequestError
from ember.registry.create import CreateSpec

_INSTRUCTION = re.compile(r"^\s*([A-Za-z]+)\s+(.*)$", re.S)


def _unquote(text: str) -> str:
    text = text.strip()
    for quote in ('"""', '"'):
        if len(text) >= 2 * len(quote) and text.startswith(quote) and text.endswith(quote):
            return text[len(quote) : -len(quote)]
    return text


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _statements(text: str) -> list[str]:
    """One string per instruction; a triple-quoted value may span lines."""
    out: list[str] = []
    open_quote = False
    for line in text.splitlines():
        if open_quote:
            out[-1] += "\n" + line
        elif line.strip() and not line.lstrip().startswith("#"):
            out.append(line)
        else:
            continue
        if line.count('"""') % 2 == 1:
            open_quote = not open_quote
    return out


def parse_modelfile(text: str) -> CreateSpec:
    base: str | None = None
    system: str | None = None
    template: str | None = None
    params: dict[str, Any] = {}
    for statement in _statements(text):
        match = _INSTRUCTION.match(statement)
        if match is None:
            raise InvalidRequestError(f"cannot read Modelfile line {statement!r}")
        command, arg = match[1].upper(), match[2]
        if command == "FROM":
            base = _unquote(arg)
        elif command == "SYSTEM":
            system = _unquote(arg)
        elif command == "TEMPLATE":
            template = _unquote(arg)
        elif command == "PARAMETER":
            key, _, raw = arg.strip().partition(" ")
            value = _value(_unquote(raw))
            if key == "stop":  # may repeat: a list of stop strings
                params.setdefault("stop", []).append(str(value))
            else:
                params[key] = value
        else:
            raise InvalidRequestError(
                f"Modelfile instruction {command} is not supported; ember takes FROM, SYSTEM, "
                "TEMPLATE and PARAMETER"
            )
    return CreateSpec(base=base, template=template, system=system, parameters=params or None)


def write_modelfile(
    base: str, template: str | None, system: str | None, params: dict[str, Any]
) -> str:
    """A Modelfile that parse_modelfile reads back as this model: FROM, TEMPLATE and SYSTEM in
    triple quotes, one PARAMETER line per value (per stop string)."""
    lines = [f"FROM {base}"]
    if template:
        lines.append(f'TEMPLATE """{template}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    for key, value in params.items():
        values = value if key == "stop" and isinstance(value, list) else [value]
        lines += [f"PARAMETER {key} {json.dumps(v)}" for v in values]
    return "\n".join(lines) + "\n"
