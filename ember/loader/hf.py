"""`hf://org/name[@revision]`: a Hugging Face Hub repository.

A complete snapshot in the local Hugging Face cache (the one `huggingface-cli download` fills) is
read from disk; otherwise files stream from `$HF_ENDPOINT/org/name/resolve/revision/FILE` with
Range requests, authorised by HF_TOKEN (or the token file `huggingface-cli login` writes).
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from pathlib import Path
from urllib.parse import quote

from ember.errors import ModelLoadError
from ember.loader.source import Source

DEFAULT_ENDPOINT = "https://huggingface.co"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REPO = re.compile(r"^[\w.-]+/[\w.-]+$")


def parse_hf_uri(uri: str) -> tuple[str, str]:
    """'hf://org/name@rev' -> ('org/name', 'rev'); the revision defaults to 'main'."""
    rest = uri.removeprefix("hf://").strip("/")
    repo, _, revision = rest.partition("@")
    if not _REPO.match(repo):
        raise ModelLoadError(
            f"'{uri}' is not a Hugging Face model; write hf://org/name or hf://org/name@revision"
        )
    return repo, revision or "main"


def hf_cache_dir() -> Path:
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    return _hf_home() / "hub"


def _hf_home() -> Path:
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface"


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def lfs_sha256(uri: str) -> dict[str, str]:
    """File name -> sha256 for each LFS file (the weights) of hf://org/name@rev, as the Hub's API
    records them (GET /api/models/ORG/NAME/revision/REV?blobs=true, as huggingface_hub's
    model_info(files_metadata=True) asks). Raises ModelLoadError if the Hub does not answer."""
    repo, revision = parse_hf_uri(uri)
    url = f"{hub_endpoint()}/api/models/{repo}/revision/{quote(revision, safe='')}?blobs=true"
    try:
        request = urllib.request.Request(url, headers=_bearer(hf_token()))
        with urllib.request.urlopen(request, timeout=30) as r:
            info = json.loads(r.read())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the Hub's file list at {url}: {exc}") from exc
    siblings = info.get("siblings") if isinstance(info, dict) else None
    out: dict[str, str] = {}
    for sibling in siblings if isinstance(siblings, list) else []:
        if not isinstance(sibling, dict):
            continue
        name, lfs = sibling.get("rfilename"), sibling.get("lfs")
        sha = lfs.get("sha256") if isinstance(lfs, dict) else None
        if isinstance(name, str) and isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha):
            out[name] = sha
    return out


def _bearer(token: str | None) -> dict[str, str]:
    """The Hub's authorisation header for `token` (none without one)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def hf_token() -> str | None:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token.strip()
    path = Path(os.environ.get("HF_TOKEN_PATH") or _hf_home() / "token").expanduser()
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def cached_snapshot(repo: str, revision: str) -> Path | None:
    """The cache's snapshot folder for this revision, if the cache has one."""
    folder = hf_cache_dir() / ("models--" + repo.replace("/", "--"))
    commit = revision
    if not _COMMIT.match(revision):
        try:
            commit = (folder / "refs" / revision).read_text(encoding="utf-8").strip()
        except OSError:
            return None
    snapshot = folder / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def hf_source(uri: str) -> Source:
    from ember.loader.files import weight_files
    from ember.loader.local import LocalSource
    from ember.loader.remote import ObjectStoreSource

    repo, revision = parse_hf_uri(uri)
    snapshot = cached_snapshot(repo, revision)
    if snapshot is not None:
        local = LocalSource(snapshot)
        try:
            if local.exists("config.json"):
                weight_files(local)
                return local
        except ModelLoadError:
            pass  # a partial download: stream the repository instead
        local.close()
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ModelLoadError(
            f"'{uri}' is not complete in the Hugging Face cache at {hf_cache_dir()} and "
            "HF_HUB_OFFLINE is set; download it first or unset HF_HUB_OFFLINE"
        )
    url = f"{hub_endpoint()}/{repo}/resolve/{quote(revision, safe='')}"
    token = hf_token()
    headers = _bearer(token)
    hint = (
        "set HF_TOKEN to a token that may read this repository (gated models also need their "
        "licence accepted on the Hub page)"
        if not token
        else "HF_TOKEN was sent: check that it may read this repository (gated models need "
        "their licence accepted on the Hub page) and that the name and revision are right"
    )
    display = f"hf://{repo}@{revision}"
    return ObjectStoreSource(url, headers=headers, hint=hint, display=display)
