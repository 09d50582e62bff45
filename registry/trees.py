"""The tree of a ready model: `trees/<model id>/<path>` -> `blobs/...`, what a worker opens over NFS.

A model becomes `ready` only with a complete tree: it is built beside its final place
(`trees/.staging-<id>-<random>`), checked to hold every file of the model as a regular file
of its size, and renamed into place by the commit. A path that is both a file and the
directory of another file (`ok.txt` and `ok.txt/inner`) can never be laid out, so such
paths are refused when the second one arrives (409 naming both), long before commit.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import uuid
from collections.abc import Iterable
from pathlib import Path

from eldric.cluster.registry_api import find_path_conflict, path_conflict
from eldric.core.blobstore import BlobStore
from eldric.core.digests import Digest
from eldric.core.request_errors import ConflictError, InsufficientStorageError

STAGING_PREFIX = ".staging-"


def refuse_conflict(path: str, others: Iterable[str], field: str = "path") -> None:
    """409 naming both paths when `path` and one of `others` cannot both exist in the model's tree."""
    other = path_conflict(path, others)
    if other is not None:
        _conflict(path, other, field)


def refuse_conflicts(paths: Iterable[str], field: str = "files") -> None:
    """409 naming two of `paths` that cannot both exist in one tree (drafts from before upload-time checks)."""
    clash = find_path_conflict(paths)
    if clash is not None:
        _conflict(*clash, field)


def _conflict(path: str, other: str, field: str) -> None:
    first, second = sorted((path, other))
    raise ConflictError(f"the paths {first!r} and {second!r} conflict: {first!r} would have to be a file "
                        "and a directory at once", field)


def stage_tree(trees: Path, blobs: BlobStore, model_id: str, files: list[dict]) -> Path:
    """Build and check the model's tree under a staging name; the caller renames it into `trees/<model id>`."""
    trees.mkdir(exist_ok=True)
    staged = trees / f"{STAGING_PREFIX}{model_id}-{uuid.uuid4().hex[:8]}"
    try:
        for f in files:
            link = staged / f["path"]
            try:
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(os.path.relpath(blobs.path(Digest.parse(f["digest"])), link.parent))
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise InsufficientStorageError(f"registry storage is full: {exc}") from None
                raise ConflictError(f"{f['path']}: cannot be placed in the model's tree ({exc.strerror}); "
                                    "the model stays a draft", "files") from None
        verify_tree(staged, files)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def verify_tree(tree: Path, files: list[dict]) -> None:
    """Every file of the model is in `tree` as a regular file of its size (following its link); else 409."""
    for f in files:
        try:
            st = (tree / f["path"]).stat()
        except OSError as exc:
            raise ConflictError(f"{f['path']}: missing from the model's tree ({exc.strerror}); "
                                "the model stays a draft", "files") from None
        if not stat.S_ISREG(st.st_mode) or st.st_size != f["size"]:
            raise ConflictError(f"{f['path']}: the model's tree holds {_describe(st)}, not the "
                                f"{f['size']}-byte file; the model stays a draft", "files")


def remove_staged(trees: Path) -> None:
    """Drop staging trees a crash left behind (their models are still drafts)."""
    for staged in trees.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(staged, ignore_errors=True)


def _describe(st: os.stat_result) -> str:
    if stat.S_ISREG(st.st_mode):
        return f"a file of {st.st_size} bytes"
    return "a directory" if stat.S_ISDIR(st.st_mode) else "something other than a file"
