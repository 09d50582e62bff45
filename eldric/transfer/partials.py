"""The download engine's unfinished downloads in a partial directory, and their upkeep.

A download named N (`sha256-<hex>`, or `url-<key>` when nobody published the digest) keeps

- `N`: the data, written in place (sparse until every range arrived);
- `N.json`: the resume state `{"digest", "size", "parts": [[offset, length, completed]…], "owner"}`,
  where `owner` is the job that wrote it last (None outside jobs);
- `N.lock`: flock'ed while one thread or process works on N. The holder removes it when it
  lets go; whoever waited on the removed file locks the new one (see `locked`).

A download that failed in a way a retry can mend keeps its data and state, so the retry
resumes. Everything else is deleted by `discard` at once, or by `clean_partials` later:
a download whose job ended, and anything untouched for a day (the maintenance schedule).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from eldric.core.blobstore import BlobStore
from eldric.core.digests import Digest, is_digest

STATE_SUFFIX = ".json"
LOCK_SUFFIX = ".lock"
INCOMING_PREFIX = ".incoming-"  # the blob store's and atomic writers' temp files
MAX_AGE_SECONDS = 86400.0  # untouched this long, a download is stale (ELDRIC_PARTIAL_MAX_AGE_SECONDS' default)


def partial_name(digest: Digest | None, key: str | None) -> str:
    return digest.filename if digest else f"url-{key}"


@contextmanager
def locked(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold the lock file `path`; yield False at once when `blocking` is False and someone else holds it.

    The holder deletes the file on leaving, so lock files do not pile up: a waiter that then
    gets the deleted file's lock sees the path gone (or another file there) and starts over.
    """
    while True:
        f = open(path, "a")  # noqa: SIM115 - held past this block: closed when the lock is let go
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            f.close()
            yield False
            return
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(f.fileno()).st_ino:
            break
        f.close()
    try:
        yield True
    finally:
        path.unlink(missing_ok=True)
        f.close()  # closing releases the flock


def read_state(partial_dir: Path, name: str) -> dict | None:
    try:
        state = json.loads((partial_dir / f"{name}{STATE_SUFFIX}").read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def saved_parts(partial_dir: Path, name: str, digest: Digest | None, size: int) -> list[tuple[int, int, int]] | None:
    """The (offset, length, completed) parts saved for this very blob, if its data is still there."""
    state = read_state(partial_dir, name)
    if not state or state.get("digest") != str(digest) or state.get("size") != size:
        return None
    if not (partial_dir / name).exists():
        return None
    try:
        return [(int(o), int(n), int(c)) for o, n, c in state["parts"]]
    except (KeyError, TypeError, ValueError):
        return None


def resumable_bytes(partial_dir: Path, digest: Digest | None, size: int, key: str | None = None) -> int:
    """Bytes of this blob already on disk in a resumable download: the space check need not find them again."""
    parts = saved_parts(partial_dir, partial_name(digest, key), digest, size)
    return sum(min(max(0, c), n) for _, n, c in parts) if parts else 0


def discard(partial_dir: Path, name: str) -> None:
    """Delete download `name`'s data and state (its lock is the caller's)."""
    for suffix in ("", STATE_SUFFIX, f"{STATE_SUFFIX}.tmp"):
        (partial_dir / f"{name}{suffix}").unlink(missing_ok=True)


@dataclass
class Cleaned:
    removed: list[str] = field(default_factory=list)  # download names
    freed: int = 0  # bytes on disk

    @property
    def digests(self) -> list[Digest]:
        """The blobs whose partial data went (downloads named by their digest)."""
        return [Digest.parse(name) for name in self.removed if is_digest(name.replace("sha256-", "sha256:", 1))]


def clean_partials(partial_dir: Path, *, max_age: float, is_finished: Callable[[str], bool] = lambda owner: False,
                   incoming_dirs: tuple[Path, ...] = (), now: float | None = None) -> Cleaned:
    """Delete the downloads nobody works on whose job ended, or that nobody touched for `max_age` seconds.

    A download being worked on holds its lock and is left alone. Stray lock files and
    `.incoming-*` temp files (of `incoming_dirs`) older than `max_age` go too.
    """
    now = time.time() if now is None else now
    out = Cleaned()
    for name in _download_names(partial_dir):
        with locked(partial_dir / f"{name}{LOCK_SUFFIX}", blocking=False) as mine:
            if not mine:
                continue  # in use
            stale = _stale(partial_dir, name, max_age, is_finished, now)
            if stale is not None:
                out.freed += stale.bytes
                discard(partial_dir, name)
                if stale.touched:
                    out.removed.append(name)
    for stale in _stale_incoming(incoming_dirs, max_age, now):
        out.freed += stale.bytes
        stale.path.unlink(missing_ok=True)
        out.removed.append(stale.name)
    return out


@dataclass(frozen=True)
class Stale:
    """A download (or temp file) `clean_partials` would delete now."""

    name: str  # the download's name; a temp file's path below its directory's parent
    path: Path  # the data file (a download's may be missing: only its state is left)
    bytes: int  # on disk, every file of it
    touched: float  # latest mtime of its files (0: none exist)
    incoming: bool = False


def stale_partials(partial_dir: Path, *, max_age: float, is_finished: Callable[[str], bool] = lambda owner: False,
                   incoming_dirs: tuple[Path, ...] = (), now: float | None = None) -> list[Stale]:
    """What `clean_partials` would delete now, by the same rules, deleting nothing (the GC sweep's look).

    Only a download nobody holds is listed: its lock is tried without waiting, as clean_partials does."""
    now = time.time() if now is None else now
    out = []
    for name in _download_names(partial_dir):
        with locked(partial_dir / f"{name}{LOCK_SUFFIX}", blocking=False) as mine:
            stale = _stale(partial_dir, name, max_age, is_finished, now) if mine else None
        if stale is not None and stale.touched:
            out.append(stale)
    return out + _stale_incoming(incoming_dirs, max_age, now)


def remove_stale(partial_dir: Path, stale: Stale, *, max_age: float, is_finished: Callable[[str], bool] = lambda owner: False,
                 now: float | None = None) -> bool:
    """Delete one download `stale_partials` listed if it is still stale and nobody holds it; True if deleted."""
    now = time.time() if now is None else now
    if stale.incoming:
        if not stale.path.exists() or now - _mtime(stale.path) < max_age:
            return False
        stale.path.unlink(missing_ok=True)
        return True
    with locked(partial_dir / f"{stale.name}{LOCK_SUFFIX}", blocking=False) as mine:
        if not mine or _stale(partial_dir, stale.name, max_age, is_finished, now) is None:
            return False
        discard(partial_dir, stale.name)
        return True


def _download_names(partial_dir: Path) -> list[str]:
    if not partial_dir.is_dir():
        return []
    return sorted({n for n in (_download_name(p.name) for p in partial_dir.iterdir()) if n})


def _stale(partial_dir: Path, name: str, max_age: float, is_finished: Callable[[str], bool], now: float) -> Stale | None:
    """The rule (under the download's lock): its job ended, or nobody touched it for `max_age` seconds."""
    files = [partial_dir / f"{name}{s}" for s in ("", STATE_SUFFIX, f"{STATE_SUFFIX}.tmp")]
    owner = (read_state(partial_dir, name) or {}).get("owner")
    touched = max((_mtime(f) for f in files), default=0.0)
    if (isinstance(owner, str) and is_finished(owner)) or now - touched >= max_age:
        return Stale(name, files[0], sum(_disk_bytes(f) for f in files), touched)
    return None


def _stale_incoming(incoming_dirs: tuple[Path, ...], max_age: float, now: float) -> list[Stale]:
    out = []
    for directory in incoming_dirs:
        for path in sorted(directory.glob(f"{INCOMING_PREFIX}*")) if directory.is_dir() else ():
            touched = _mtime(path)
            if now - touched >= max_age:
                out.append(Stale(str(path.relative_to(directory.parent)), path, _disk_bytes(path), touched, incoming=True))
    return out


def _download_name(filename: str) -> str | None:
    for suffix in (f"{STATE_SUFFIX}.tmp", STATE_SUFFIX, LOCK_SUFFIX):
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return filename if filename.startswith(("sha256-", "url-")) else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _disk_bytes(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def covered(partial_dir: Path, digest: Digest, start: int, end: int) -> Path | None:
    """The partial data of `digest` if bytes `start`..`end` (inclusive) lie in whole parts of it.

    What a download in progress may serve to peers: a part counts once its state says it is
    whole, and the engine saves that only after the part is verified (a peer's bytes against the
    swarm's range hash) or fetched whole from upstream. The state is re-read on every call.
    """
    name = partial_name(digest, None)
    state = read_state(partial_dir, name)
    if not state or state.get("digest") != str(digest):
        return None
    try:
        whole = sorted((int(o), int(n)) for o, n, c in state["parts"] if int(c) >= int(n) > 0)
    except (KeyError, TypeError, ValueError):
        return None
    pos = start
    for offset, length in whole:
        if offset <= pos < offset + length:
            pos = offset + length
            if pos > end:
                data = partial_dir / name
                return data if data.exists() else None
    return None


def servable(store: BlobStore, partial_dir: Path, digest: Digest, start: int, end: int) -> Path | None:
    """Where bytes `start`..`end` of `digest` can be read for a peer: the stored blob, or a download's whole parts.

    The store is asked again after the partial data: a download that just finished was renamed
    into the store between the two looks.
    """
    if store.has(digest):
        return store.path(digest)
    found = covered(partial_dir, digest, start, end)
    if found is None and store.has(digest):
        return store.path(digest)
    return found
