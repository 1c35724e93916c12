"""The sha256 digests a source publishes next to a model's files: a `NAME.sha256` file per file,
or a sha256sum manifest (`SHA256SUMS`, ...) for all of them, in `sha256sum`'s format
("<64 hex digits>  <name>", or the digits alone in a `NAME.sha256`)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ember.errors import ModelLoadError

if TYPE_CHECKING:
    from ember.loader import Source

log = logging.getLogger(__name__)

MANIFESTS = ("SHA256SUMS", "SHA256SUMS.txt", "sha256sums.txt", "checksums.sha256")
SUFFIX = ".sha256"
_LINE = re.compile(r"^([0-9a-fA-F]{64})(?:\s+\*?(?:\./)?(\S.*?))?\s*$")


@dataclass(frozen=True, slots=True)
class Digest:
    sha256: str  # lower-case hex
    origin: str  # the digest file it came from, as a user would name it


def is_digest_file(name: str) -> bool:
    return name in MANIFESTS or name.endswith(SUFFIX)


def parse_sha256sum(text: str, default_name: str | None = None) -> dict[str, str]:
    """File name -> sha256 from sha256sum output; a bare digest names `default_name`."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if match is None:
            continue
        named: str | None = match[2] or default_name
        if named is not None:
            out[named] = match[1].lower()
    return out


def expected_digests(source: Source, names: list[str]) -> dict[str, Digest]:
    """The digests that the digest files among `names` give for the other files of `names`.
    A file's own NAME.sha256 wins over a manifest."""
    wanted = set(names)
    out: dict[str, Digest] = {}
    for manifest in (n for n in names if n in MANIFESTS):
        for name, sha in _read(source, manifest, None).items():
            if name in wanted:
                out[name] = Digest(sha, source.location(manifest))
    for digest_file in (n for n in names if n.endswith(SUFFIX)):
        target = digest_file.removesuffix(SUFFIX)
        own = _read(source, digest_file, target).get(target)
        if target in wanted and own is not None:
            out[target] = Digest(own, source.location(digest_file))
    return out


def hub_digests(uri: str, names: list[str]) -> dict[str, Digest]:
    """For hf:// sources, which publish no digest files: the sha256 the Hub records for each
    LFS file (the weights) among `names`. Where the Hub's API does not answer, none, with a
    warning: the pull goes on unverified, as from any source without digests."""
    from ember.loader.hf import lfs_sha256, parse_hf_uri

    repo, revision = parse_hf_uri(uri)
    origin = f"the Hub's record of hf://{repo}@{revision}"
    try:
        known = lfs_sha256(uri)
    except ModelLoadError as exc:
        log.warning("the weights' sha256 cannot be checked: %s", exc)
        return {}
    return {name: Digest(known[name], origin) for name in names if name in known}


def _read(source: Source, name: str, default_name: str | None) -> dict[str, str]:
    try:
        text = source.read_file(name).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelLoadError(
            f"cannot read the digest file '{source.location(name)}': {exc}; fix or remove it"
        ) from exc
    return parse_sha256sum(text, default_name)
