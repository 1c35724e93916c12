"""Model names as Ollama writes them: `[host/namespace/]model[:tag]`, `tiny` meaning
`tiny:latest`. ember's store has no registries, so a host part (`registry.ollama.ai/library/tiny`)
is accepted and dropped: that name is `tiny:latest`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from ember.errors import InvalidRequestError

DEFAULT_TAG = "latest"
# Ollama's default namespace: `library/llama3` and `llama3` are the same model.
DEFAULT_NAMESPACE = "library"

# Parts start with a letter or digit, so none is "." or ".." or hidden; tags may start with "_".
_PART = re.compile(r"[a-z0-9][a-z0-9._-]{0,79}")
_TAG = re.compile(r"[a-z0-9_][a-z0-9._-]{0,79}")
# A registry host: has a dot or a port, as `registry.ollama.ai` or `localhost:5000`.
_HOST = re.compile(r"[a-z0-9-]+(?:\.[a-z0-9-]+)+(?::\d{1,5})?|[a-z0-9.-]+:\d{1,5}")


@dataclass(frozen=True, slots=True)
class ModelName:
    model: str
    tag: str = DEFAULT_TAG
    namespace: str | None = None

    def __str__(self) -> str:
        prefix = f"{self.namespace}/" if self.namespace else ""
        return f"{prefix}{self.model}:{self.tag}"

    @property
    def relpath(self) -> PurePosixPath:
        """Where the model lives under the store's models/ folder: [namespace/]model/tag."""
        parts = [self.namespace] if self.namespace else []
        return PurePosixPath(*parts, self.model, self.tag)


def _invalid(name: str, why: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"invalid model name {name!r}: {why}; use [namespace/]model[:tag] with letters, digits, "
        "'.', '_' and '-', e.g. 'tiny' or 'library/llama3.2:1b'",
        param="model",
    )


def parse_name(name: str) -> ModelName:
    """Parse and normalise a model name. Names are case-insensitive (folded to lower case)."""
    text = _without_host(name.strip().lower())
    if not text:
        raise _invalid(name, "the name is empty")
    base, sep, tag = text.partition(":")
    if sep and not _TAG.fullmatch(tag):
        raise _invalid(name, f"bad tag {tag!r}")
    parts = base.split("/")
    if len(parts) > 2:
        raise _invalid(name, "at most one 'namespace/' prefix is allowed")
    for part in parts:
        if not _PART.fullmatch(part):
            raise _invalid(name, f"bad name part {part!r}")
    namespace = parts[0] if len(parts) == 2 and parts[0] != DEFAULT_NAMESPACE else None
    return ModelName(model=parts[-1], tag=tag if sep else DEFAULT_TAG, namespace=namespace)


def _without_host(text: str) -> str:
    """`host/namespace/model[:tag]` -> `namespace/model[:tag]` when `host` looks like one."""
    host, sep, rest = text.partition("/")
    if sep and rest.count("/") == 1 and _HOST.fullmatch(host):
        return rest
    return text
