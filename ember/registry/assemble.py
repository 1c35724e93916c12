"""Between model folders and manifests + blobs: `import_dir` stores a folder's files as blobs and
describes them in a manifest; `materialise` builds the folder the engine loads from a manifest."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ember.errors import ModelLoadError
from ember.registry.blobs import Blobs, file_sha256, link_or_copy
from ember.registry.details import visible_files
from ember.registry.manifests import Manifest, ManifestFile


def import_dir(
    blobs: Blobs,
    path: Path,
    known: dict[str, str] | None = None,
    parent: str = "",
    own: bool = True,
) -> Manifest:
    """Store the visible files of the model folder `path` as blobs; `known` gives sha256s already
    computed (a pull hashes as bytes arrive), the rest are hashed now. `own`: the folder is the
    store's, so its weight files are made hard links to their blobs (one copy of the bytes). A
    user's folder outside the store is left as it is and its files are copied: a blob linked to a
    user's file would change whenever the user rewrote that file in place (cp, dd, rsync)."""
    known = known or {}
    files = []
    for file in visible_files(path):
        rel = file.relative_to(path).as_posix()
        size = file.stat().st_size
        if not own and ManifestFile(rel, "", size).linked:
            files.append(ManifestFile(rel, blobs.copy_in(file), size))
            continue
        sha = known.get(rel) or file_sha256(file)
        entry = ManifestFile(rel, sha, size)
        if not entry.linked:
            if not blobs.has(sha):
                blobs.write(file.read_bytes())
        else:
            blobs.adopt(file, sha)
        files.append(entry)
    return Manifest(tuple(files), parent)


def materialise(blobs: Blobs, manifest: Manifest, target: Path) -> None:
    """Build `target` from the manifest's blobs in a hidden folder beside it, then rename it into
    place (replacing an older folder): a reader sees the whole model or none of it."""
    missing = [f.path for f in manifest.files if not blobs.has(f.sha256)]
    if missing:
        raise ModelLoadError(
            f"the blobs of {', '.join(missing)} are missing from {blobs.root}; pull or create "
            "the model again"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        for f in manifest.files:
            dst = tmp / f.path
            dst.parent.mkdir(parents=True, exist_ok=True)
            if f.linked:
                link_or_copy(blobs.path(f.sha256), dst)
            else:
                shutil.copyfile(blobs.path(f.sha256), dst)
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(new: Path, target: Path) -> None:
    """Rename `new` to `target`, replacing what is there (a model folder or nothing)."""
    if not target.exists():
        os.rename(new, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)
