"""Portable bundles: `eldric export` (data node -> OCI layout tar) and `eldric import` (tar -> data node).

Export reads each model's manifest from the data node's `/v2/`, writes `oci-layout` and
`index.json`, then every blob once, streamed from the registry into the tar and verified on the
way; the file appears under its name only when complete (`<out>.partial` until then).

Import checks the whole bundle before sending a byte (layout, index, every manifest against its
digest, every blob present with the size its manifest gives), then pushes blobs in the order they
lie in the file: a blob the data node already has is skipped (HEAD), one another repository of it
holds is mounted, any other is sent in chunks, hashed while sent, and its upload is closed only when
its digest matched. One mismatch stops the import and names the blob; manifests are put only after
every blob of every model is on the data node, so a refused bundle leaves no model behind. Each
session's Location and offset are kept in a state file after every chunk: the same command run again
after Ctrl-C, a crash or a dropped connection skips finished blobs and goes on inside a partly sent one.

Names (`model_reference`): `qwen2.5:0.5b` is the repository `library/qwen2.5`, tag `0.5b`, as Ollama
names it and as the data node serves registry models (`acme/house:v1` is `acme/house`, tag `v1`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from eldric.core.atomicfile import write_atomically
from eldric.core.digests import Digest
from eldric.core.manifests import MANIFEST_V2, OCI_MANIFEST, Layer, Manifest
from eldric.core.names import DEFAULT_HOST, ModelName
from eldric.core.oci_layout import (IMAGE_NAME, REF_NAME, BlobMismatchError, BundleError, BundleImage, Descriptor,
                                    LayoutReader, LayoutWriter, VerifyingReader, hash_prefix, parse_image_manifest,
                                    to_docker_manifest, to_oci_manifest)
from eldric.transfer.oci_client import OciClient, OciClientError, upload_blob
from eldric.transfer.retry import TRANSIENT_ERRORS, backoff_delay

OLLAMA_LAYER_PREFIX = "application/vnd.ollama.image."
CHUNK_BYTES = 64 << 20
SEND_ATTEMPTS = 5

Progress = Callable[[int], None]


def model_reference(raw: str) -> tuple[ModelName, str, str]:
    """(name, repository, tag) on the data node of an Ollama name or a registry model name."""
    name = ModelName.parse(raw)
    if name.host != DEFAULT_HOST:
        raise BundleError(f"{raw}: bundles carry {DEFAULT_HOST} names and registry models, not {name.host} names")
    return name, name.repository, name.tag


def _what(layer: Layer, manifest: Manifest, model: str) -> str:
    kind = "config" if layer == manifest.config else f"layer {layer.media_type}"
    return f"{kind} of {model}"


# ---- export ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportItem:
    name: ModelName
    repo: str
    raw: bytes  # the manifest as the bundle holds it (OCI media type)
    manifest: Manifest
    source_digest: str  # of the manifest as the data node serves it

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(OCI_MANIFEST, Digest.of_bytes(self.raw), len(self.raw),
                          {REF_NAME: f"{self.repo}:{self.name.tag}", IMAGE_NAME: str(self.name)})


def plan_export(client: OciClient, models: list[str]) -> list[ExportItem]:
    """Each model's manifest from the data node, as it will go into the bundle."""
    items: dict[str, ExportItem] = {}
    for raw_name in models:
        name, repo, tag = model_reference(raw_name)
        if str(name) in items:
            continue
        try:
            raw, _ = client.get_manifest(repo, tag)
        except OciClientError as exc:
            if exc.status == 404:
                raise BundleError(f"{name.short}: not on the data node ({exc})") from None
            raise
        manifest = parse_image_manifest(raw, f"the manifest of {name.short}")
        items[str(name)] = ExportItem(name, repo, to_oci_manifest(raw), manifest, str(Digest.of_bytes(raw)))
    return list(items.values())


def export_size(items: list[ExportItem]) -> int:
    blobs = {layer.digest.hex: layer.size for item in items for layer in item.manifest.blobs()}
    blobs.update((item.descriptor.digest.hex, len(item.raw)) for item in items)
    return sum(blobs.values())


def write_bundle(client: OciClient, items: list[ExportItem], out: BinaryIO, progress: Progress,
                 sleep: Callable[[float], None] = time.sleep) -> int:
    """The layout of `items` into `out`, blobs streamed from the data node; returns the number of blobs."""
    writer = LayoutWriter(out)
    try:
        writer.write_header(item.descriptor for item in items)
        for item in items:
            desc = item.descriptor
            writer.add_blob(desc.digest, desc.size, _BytesReader(item.raw), f"manifest of {item.name.short}", progress)
        for item in items:
            for layer in item.manifest.blobs():
                if writer.has_blob(layer.digest):
                    continue
                with _ResumingBlob(client, item.repo, layer.digest, sleep=sleep) as source:
                    writer.add_blob(layer.digest, layer.size, source, _what(layer, item.manifest, item.name.short),
                                    progress)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return len(writer.written)


def export_bundle(client: OciClient, models: list[str], path: Path, progress: Progress = lambda n: None,
                  on_plan: Callable[[int], None] = lambda total: None, sleep: Callable[[float], None] = time.sleep
                  ) -> dict:
    """Write the bundle to `path` (via `<path>.partial`, renamed when complete); returns what it holds."""
    items = plan_export(client, models)
    on_plan(export_size(items))
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as f:
            blobs = write_bundle(client, items, f, progress, sleep)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return {"bundle": str(path), "size": path.stat().st_size, "blobs": blobs,
            "models": [{"name": item.name.short, "repository": item.repo, "tag": item.name.tag,
                        "digest": item.source_digest, "size": item.manifest.total_size} for item in items]}


class _ResumingBlob:
    """A blob's bytes from the registry; a connection that breaks is opened again where it stopped (Range)."""

    def __init__(self, client: OciClient, repo: str, digest: Digest, attempts: int = SEND_ATTEMPTS,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client, self.repo, self.digest, self.attempts, self.sleep = client, repo, digest, attempts, sleep
        self.pos, self.failures, self.resp = 0, 0, None

    def read(self, n: int = -1) -> bytes:
        while True:
            try:
                if self.resp is None:
                    self.resp = self.client.open_blob(self.repo, self.digest, self.pos)
                data = self.resp.raw.read(n)
                self.pos += len(data)
                return data
            except TRANSIENT_ERRORS as exc:
                self.close()
                self.failures += 1
                if self.failures >= self.attempts:
                    raise OciClientError(f"blob {self.digest}: the connection broke {self.failures} times, "
                                            f"last at byte {self.pos} ({type(exc).__name__})") from None
                self.sleep(backoff_delay(self.failures - 1, base=0.2, cap=5.0))

    def close(self) -> None:
        if self.resp is not None:
            self.resp.close()
            self.resp = None

    def __enter__(self) -> _ResumingBlob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n is None or n < 0 else self.pos + n
        chunk, self.pos = self.data[self.pos:end], min(end, len(self.data))
        return chunk


# ---- import ----------------------------------------------------------------------------------------

@dataclass
class ImportItem:
    image: BundleImage
    name: ModelName
    repo: str
    raw: bytes  # what is put on the data node: Ollama's Docker schema-2 manifest

    @property
    def manifest(self) -> Manifest:
        return self.image.manifest


def name_of(image: BundleImage, override: str | None) -> str:
    """The model name an index entry carries: `--name`, else containerd's full name, else skopeo's ref.name.

    A ref.name with neither `/` nor `:` is only a tag (`latest`) in OCI's convention: it names no model.
    """
    if override:
        return override
    notes = image.descriptor.annotations
    if notes.get(IMAGE_NAME):
        return notes[IMAGE_NAME]
    ref = notes.get(REF_NAME, "")
    if "/" in ref or ":" in ref:
        return ref
    found = f"ref.name {ref!r}" if ref else "no name annotation"
    raise BundleError(f"index.json entry {image.number} ({image.descriptor.digest}) has {found}: "
                      "give the model's name with --name")


def read_bundle(reader: LayoutReader, name: str | None = None) -> list[ImportItem]:
    """Every model of the bundle, checked without the network: manifests verified, every blob present and sized."""
    images = list(reader.images())
    if name and len(images) != 1:
        raise BundleError(f"--name needs a bundle of one model; this one holds {len(images)}")
    items: list[ImportItem] = []
    for image in images:
        model, repo, _ = model_reference(name_of(image, name))
        if not any(layer.media_type.startswith(OLLAMA_LAYER_PREFIX) for layer in image.manifest.layers):
            raise BundleError(f"{model.short} (index.json entry {image.number}) is not an Ollama model: "
                              f"no {OLLAMA_LAYER_PREFIX}* layer")
        for layer in image.manifest.blobs():
            reader.open_blob(layer.digest, layer.size, _what(layer, image.manifest, model.short)).close()
        items.append(ImportItem(image, model, repo, to_docker_manifest(image.raw)))
    return items


@dataclass
class ImportState:
    """Upload sessions of one bundle into one registry, kept on disk so a rerun goes on where this one stopped."""

    path: Path
    uploads: dict[str, dict] = field(default_factory=dict)  # "<repo>@<digest>" -> {"location", "offset"}

    @classmethod
    def load(cls, state_dir: Path, registry: str, bundle: Path) -> ImportState:
        st = bundle.stat()
        key = f"{registry}|{bundle.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        path = Path(state_dir) / f"import-{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
        try:
            uploads = json.loads(path.read_text()).get("uploads", {})
        except (OSError, ValueError):
            uploads = {}
        return cls(path, uploads if isinstance(uploads, dict) else {})

    def save(self, key: str, location: str | None, offset: int = 0) -> None:
        if location is None:
            self.uploads.pop(key, None)
        else:
            self.uploads[key] = {"location": location, "offset": offset}
        write_atomically(self.path, json.dumps({"uploads": self.uploads}).encode())

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class ImportPlan:
    """Which blob goes to which repositories, in the order the bundle holds them."""

    blobs: list[tuple[Layer, str, list[str]]]  # (blob, what it is, repositories that need it)

    @classmethod
    def of(cls, reader: LayoutReader, items: list[ImportItem]) -> ImportPlan:
        found: dict[str, tuple[Layer, str, list[str]]] = {}
        for item in items:
            for layer in item.manifest.blobs():
                entry = found.setdefault(layer.digest.hex, (layer, _what(layer, item.manifest, item.name.short), []))
                if item.repo not in entry[2]:
                    entry[2].append(item.repo)
        return cls(sorted(found.values(), key=lambda e: reader.offset_of(e[0].digest)))


@dataclass
class Importer:
    """Pushes a checked bundle into one registry; counts what it sent and what it skipped."""

    client: OciClient
    reader: LayoutReader
    state: ImportState
    progress: Progress = lambda n: None
    chunk_bytes: int = CHUNK_BYTES
    sleep: Callable[[float], None] = time.sleep
    sent_blobs: int = 0
    sent_bytes: int = 0
    skipped_blobs: int = 0
    resumed_bytes: int = 0

    def missing(self, plan: ImportPlan) -> list[tuple[Layer, str, list[str], list[str]]]:
        """(blob, what, repositories needing it, those lacking it) for each blob some repository lacks."""
        todo = []
        for layer, what, repos in plan.blobs:
            lacking = [repo for repo in repos if not self.client.has_blob(repo, layer.digest)]
            if lacking:
                todo.append((layer, what, repos, lacking))
            else:
                self.skipped_blobs += 1
        return todo

    def push_blob(self, layer: Layer, what: str, repos: list[str], lacking: list[str]) -> None:
        holder = next((repo for repo in repos if repo not in lacking), None)
        for repo in lacking:
            location = self.client.mount_blob(repo, layer.digest, holder) if holder else None
            if holder is None or location is not None:
                self.send(repo, layer, what, location)
            holder = repo

    def send(self, repo: str, layer: Layer, what: str, fresh: str | None = None) -> None:
        """Send one blob through an upload session: the saved one if the registry still knows it, else a new one."""
        key = f"{repo}@{layer.digest}"
        location, offset = self._saved_session(key, layer.size)
        if location is None:
            location, offset = fresh or self.client.start_upload(repo), 0
        elif fresh is not None:
            self.client.cancel_upload(fresh)
        self.state.save(key, location, offset)
        self.progress(offset)
        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                location = self._send_from(layer, what, location, offset, key)
                break
            except OciClientError as exc:
                saved = self.state.uploads[key]  # the last Location the registry gave, and its offset
                location = saved["location"]
                retryable = exc.status is None or exc.status >= 500 or exc.status == 416
                offset = self.client.upload_offset(location, saved["offset"]) if (
                    retryable and attempt < SEND_ATTEMPTS) else None
                if offset is None or offset > layer.size:
                    raise
                self.sleep(backoff_delay(attempt - 1, base=0.2, cap=5.0))
        self.client.finish_upload(location, layer.digest)
        self.state.save(key, None)
        self.sent_blobs += 1

    def _saved_session(self, key: str, size: int) -> tuple[str | None, int]:
        """The session a previous run left for this blob and how far it got, if the registry still knows it."""
        saved = self.state.uploads.get(key) or {}
        location = saved.get("location")
        offset = self.client.upload_offset(location, int(saved.get("offset") or 0)) if location else None
        if location is None or offset is None or offset > size:
            return None, 0
        self.resumed_bytes += offset
        return location, offset

    def _send_from(self, layer: Layer, what: str, location: str, offset: int, key: str) -> str:
        with self.reader.open_blob(layer.digest, layer.size, what) as src:
            verifying = VerifyingReader(src, layer.digest, layer.size, what, on_read=self._count,
                                        hasher=hash_prefix(src, offset), done=offset)
            try:
                location = upload_blob(self.client, location, lambda start: verifying, layer.size, offset,
                                       chunk_bytes=self.chunk_bytes,
                                       on_location=lambda loc, at: self.state.save(key, loc, at))
                if not verifying.verified:  # an empty blob, or a rerun that found every byte already sent
                    verifying.check()
            except BlobMismatchError:
                self.client.cancel_upload(location)
                self.state.save(key, None)
                raise
        return location

    def _count(self, n: int) -> None:
        self.sent_bytes += n
        self.progress(n)


def import_bundle(client: OciClient, path: Path, state_dir: Path, *, name: str | None = None,
                  progress: Progress = lambda n: None, on_plan: Callable[[int], None] = lambda total: None,
                  chunk_bytes: int = CHUNK_BYTES) -> dict:
    """Load the bundle at `path` into the registry; BundleError (nothing imported) when it is refused."""
    with open(path, "rb") as f:
        reader = LayoutReader(f)
        items = read_bundle(reader, name)
        client.check()
        state = ImportState.load(state_dir, client.base, path)
        importer = Importer(client, reader, state, progress, max(1, chunk_bytes))
        plan = ImportPlan.of(reader, items)
        todo = importer.missing(plan)
        on_plan(sum(layer.size for layer, _, _, _ in todo))
        for layer, what, repos, lacking in todo:
            importer.push_blob(layer, what, repos, lacking)
        models = []
        for item in items:
            digest = client.put_manifest(item.repo, item.name.tag, item.raw, MANIFEST_V2)
            models.append({"name": item.name.short, "repository": item.repo, "tag": item.name.tag, "digest": digest,
                           "size": item.manifest.total_size})
    state.forget()
    return {"bundle": str(path), "registry": client.base, "models": models, "sent_blobs": importer.sent_blobs,
            "sent_bytes": importer.sent_bytes, "skipped_blobs": importer.skipped_blobs,
            "resumed_bytes": importer.resumed_bytes}

