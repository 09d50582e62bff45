"""OCI image layouts in one tar file: the portable bundle `eldric export` writes and `eldric import` reads.

A bundle is an OCI image layout (image-spec `image-layout.md`) packed in an uncompressed tar, the
`oci-archive:` format of skopeo and containers/image::

    oci-layout                  {"imageLayoutVersion": "1.0.0"}
    index.json                  one manifest descriptor per model, with its name in annotations
    blobs/sha256/<hex>          manifests, configs and layers, each once

Media types. skopeo 1.9 refuses any Docker schema-2 manifest whose layers are not Docker's own types
(`unsupported docker v2s2 media type: "application/vnd.ollama.image.model"`, in every transport), but
reads an OCI manifest holding Ollama's layer types. So a bundle holds OCI manifests: `to_oci_manifest`
swaps the manifest's and the config's media types for the OCI ones in the bytes and nothing else, and
`to_docker_manifest` swaps them back, so a model exported and imported keeps its manifest digest.
Blobs are copied unchanged.

Everything streams: a blob goes through `VerifyingReader` (sha256 and length checked while the bytes
pass) straight into or out of the tar; only manifests and `index.json` (at most 4 MiB) are held whole.
The reader needs a seekable file (skopeo writes `index.json` after the blobs); it finds the members it
needs by passes over the tar's headers, keeping no others, then reads them in any order.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from eldric.core.digests import Digest, is_digest
from eldric.core.errors import DigestMismatchError, EldricError
from eldric.core.manifests import CONFIG, MANIFEST_V2, MAX_MANIFEST_BYTES, OCI_MANIFEST, Manifest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYOUT_FILE, INDEX_FILE, BLOBS_DIR = "oci-layout", "index.json", "blobs/sha256/"
LAYOUT_VERSION = "1.0.0"
# What skopeo writes (the reference after `oci-archive:FILE:`) and what containerd writes (the full name).
REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"
BLOCK = 1 << 20
MAX_INDEX_BYTES = 4 << 20
KEPT_BLOB_HEADERS = 1024  # the first pass keeps this many blob headers (under 1 MiB), sparing later passes


class BundleError(EldricError):
    """A bundle that is not a usable OCI layout, or that lacks what its manifests promise."""


class BlobMismatchError(BundleError, DigestMismatchError):
    """A blob whose bytes do not have the digest (or the size) its name and manifest promise."""


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Descriptor:
    """One entry of `index.json`: a manifest by digest, with its annotations (the model's name)."""

    media_type: str
    digest: Digest
    size: int
    annotations: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        doc: dict = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        return doc


# ---- media types -----------------------------------------------------------------------------------

def _convert(raw: bytes, manifest_type: tuple[str, str], config_type: tuple[str, str]) -> bytes:
    """`raw` with the manifest's media type and its config's swapped (old, new), every other byte kept.

    Falls back to compact JSON when the bytes spell a type unusually (escapes, or the same string
    elsewhere): the result is then the same document, checked, in other bytes.
    """
    doc = _json_object(raw, "manifest")
    want, swaps = dict(doc), []
    if doc.get("mediaType") == manifest_type[0]:
        want["mediaType"] = manifest_type[1]
        swaps.append(manifest_type)
    config = doc.get("config")
    if isinstance(config, dict) and config.get("mediaType") == config_type[0]:
        want["config"] = {**config, "mediaType": config_type[1]}
        swaps.append(config_type)
    if not swaps:
        return raw
    out = raw
    for old, new in swaps:
        out = out.replace(json.dumps(old).encode(), json.dumps(new).encode())
    try:
        if json.loads(out) == want:
            return out
    except ValueError:
        pass
    return json.dumps(want, separators=(",", ":")).encode()


def to_oci_manifest(raw: bytes) -> bytes:
    """An Ollama (Docker schema-2) manifest as an OCI one: only the manifest's and the config's media types change.

    The config becomes an OCI image config (Ollama's has `architecture`, `os` and `rootfs`), which is
    what `skopeo inspect` needs besides copying; a Docker config type there reads as an "artifact".
    """
    return _convert(raw, (MANIFEST_V2, OCI_MANIFEST), (CONFIG, OCI_CONFIG))


def to_docker_manifest(raw: bytes) -> bytes:
    """An OCI manifest as the Docker schema-2 manifest Ollama and the data node serve.

    The inverse of `to_oci_manifest`: a model exported and imported keeps its manifest bytes and digest.
    """
    return _convert(raw, (OCI_MANIFEST, MANIFEST_V2), (OCI_CONFIG, CONFIG))


def _json_object(raw: bytes, what: str) -> dict:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{what} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BundleError(f"{what} is not a JSON object")
    return doc


# ---- streaming verification ------------------------------------------------------------------------

class VerifyingReader:
    """Reads exactly `size` bytes from `source`, hashing them; the read that ends them checks the digest.

    A short source or other bytes raise BlobMismatchError naming `what` (bytes past `size` are never
    read). `on_read(n)` hears every block, for progress bars.
    """

    def __init__(self, source: Readable, digest: Digest, size: int, what: str, *,
                 on_read: Callable[[int], None] = lambda n: None, hasher: hashlib._Hash | None = None,
                 done: int = 0) -> None:
        self.source, self.digest, self.size, self.what, self.on_read = source, digest, size, what, on_read
        self.hasher = hasher or hashlib.sha256()
        self.done = done  # bytes already hashed into `hasher` (a resumed upload hashes its prefix first)
        self.verified = False

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.done
        want = left if n is None or n < 0 else min(n, left)
        data = b""
        while len(data) < want:  # a socket may hand over less than asked; tarfile wants whole blocks
            more = self.source.read(want - len(data))
            if not more:
                break
            data = more if not data else data + more
        self.done += len(data)
        self.hasher.update(data)
        if data:
            self.on_read(len(data))
        if not data and left > 0:
            raise BlobMismatchError(f"blob {self.digest} ({self.what}): {self.done} bytes, expected {self.size}")
        if self.done == self.size and not self.verified:
            self.check()
        return data

    def check(self) -> None:
        actual = self.hasher.hexdigest()
        if actual != self.digest.hex:
            raise BlobMismatchError(f"blob {self.digest} ({self.what}): its bytes have sha256:{actual}")
        self.verified = True


def hash_prefix(source: BinaryIO, length: int) -> hashlib._Hash:
    """sha256 of the first `length` bytes of `source` (read from where it stands)."""
    hasher, left = hashlib.sha256(), length
    while left > 0:
        block = source.read(min(BLOCK, left))
        if not block:
            raise BundleError("the bundle ended inside a blob")
        hasher.update(block)
        left -= len(block)
    return hasher


# ---- writing -----------------------------------------------------------------------------------------

class LayoutWriter:
    """Writes an OCI layout into a tar, member after member (any stream will do: nothing is sought).

    Order: `oci-layout`, `index.json`, then blobs (manifests first), so a streaming reader learns the
    models before their bytes. Entries get fixed owners, modes and times: the same models make the
    same bundle, byte for byte.
    """

    def __init__(self, out: BinaryIO) -> None:
        # Stream mode ("w|"): nothing is sought, so stdout or a pipe would do. Closed by close().
        # PAX, not plain ustar: a ustar size field stops below 8 GiB and model layers are larger; a pax
        # record is written only for such a member (Go's archive/tar, skopeo's, reads it).
        self.tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT,  # noqa: SIM115
                                bufsize=BLOCK, copybufsize=BLOCK)
        self.written: set[str] = set()

    def _info(self, name: str, size: int = 0, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size, info.type, info.mtime = size, kind, 0
        info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        return info

    def write_header(self, descriptors: Iterable[Descriptor]) -> None:
        self.add_bytes(LAYOUT_FILE, json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [d.to_json() for d in descriptors]}
        self.add_bytes(INDEX_FILE, json.dumps(index, indent=2).encode())
        for name in ("blobs/", BLOBS_DIR):
            self.tar.addfile(self._info(name, kind=tarfile.DIRTYPE))

    def add_bytes(self, name: str, data: bytes) -> None:
        self.tar.addfile(self._info(name, len(data)), io.BytesIO(data))

    def has_blob(self, digest: Digest) -> bool:
        return digest.hex in self.written

    def add_blob(self, digest: Digest, size: int, source: Readable, what: str,
                 on_read: Callable[[int], None] = lambda n: None) -> None:
        """Copy `size` bytes of `source` into `blobs/sha256/<hex>`, verified on the way (BlobMismatchError)."""
        if self.has_blob(digest):
            return
        reader = VerifyingReader(source, digest, size, what, on_read=on_read)
        self.tar.addfile(self._info(BLOBS_DIR + digest.hex, size), reader)
        if not reader.verified:  # a zero-length blob is never read
            reader.check()
        self.written.add(digest.hex)

    def close(self) -> None:
        self.tar.close()

    def abort(self) -> None:
        """Give up on a broken bundle: write nothing more (the caller deletes the file)."""
        stream = self.tar.fileobj
        self.tar.closed = stream.closed = True  # _Stream.__del__ would flush into a closed file


# ---- reading -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BundleImage:
    """One model of a bundle: its index entry, its manifest (as written in the bundle) and parsed."""

    number: int  # 1-based position in index.json, for messages
    descriptor: Descriptor
    raw: bytes
    manifest: Manifest


class LayoutReader:
    """An OCI layout tar opened for reading: the members it needs located by passes over the headers, read on demand.

    The first pass finds `oci-layout` and `index.json` and keeps the headers of up to KEPT_BLOB_HEADERS
    blobs on the way: a bundle of fewer (every real one) is read with that one pass, as before. Past that,
    only what an import reads is kept: a second pass finds the manifests the index names, a third the
    blobs those manifests name (data is skipped by seeking). So memory does not grow with the number of
    members: keeping every header (tarfile's `getmembers()`) took 164 MiB for a bundle of 200,000 members
    (issue 21, finding 13); now 200,000 cost three passes of ~4 s each. A name that appears twice is refused.
    """

    def __init__(self, f: BinaryIO) -> None:
        self.f = f  # the caller owns and closes it
        try:
            self.tar = tarfile.TarFile(fileobj=f, mode="r")  # for extractfile(); it holds the first member only
        except tarfile.TarError as exc:
            raise BundleError(f"not a tar file: {exc}") from None
        self.files: dict[str, tarfile.TarInfo] = {}
        self._absent: set[str] = set()  # looked for and not in the tar
        self._complete = False  # every blob member is in `files` (the first pass saw few enough)
        self.locate({LAYOUT_FILE, INDEX_FILE})
        self._check_layout()

    def _headers(self) -> Iterator[tarfile.TarInfo]:
        """Every member's header, front to back, none kept (tarfile appends each to its list: emptied as it grows)."""
        self.f.seek(0)
        try:
            tar = tarfile.TarFile(fileobj=self.f, mode="r")
            while (member := tar.next()) is not None:
                tar.members.clear()
                yield member
        except tarfile.TarError as exc:
            raise BundleError(f"not a tar file: {exc}") from None

    def locate(self, names: Iterable[str]) -> None:
        """Find the members of these names in one pass over the headers (those found before are not sought again)."""
        wanted = set(names) - self.files.keys() - self._absent
        if not wanted or self._complete:
            return
        found: dict[str, tarfile.TarInfo] = {}
        blobs: dict[str, tarfile.TarInfo] | None = {} if not self.files else None  # the first pass only
        for member in self._headers():
            name = member.name.removeprefix("./")
            if name in found or (blobs is not None and name in blobs):
                raise BundleError(f"the bundle holds {name} twice")
            if name in wanted:
                found[name] = member
            elif blobs is not None and name.startswith(BLOBS_DIR):
                blobs[name] = member
                if len(blobs) > KEPT_BLOB_HEADERS:
                    blobs = None  # a bundle of very many members: later passes find what the manifests name
        self.files.update(found)
        self._absent |= wanted - found.keys()
        if blobs is not None:  # every blob of the tar is known now: no later pass is needed
            self.files.update(blobs)
            self._complete = True

    def _member_bytes(self, name: str, limit: int) -> bytes:
        member = self.files.get(name)
        if member is None or not member.isreg():
            raise BundleError(f"not an OCI image layout: no file {name}")
        if member.size > limit:
            raise BundleError(f"{name} is larger than {limit} bytes")
        f = self.tar.extractfile(member)
        assert f is not None
        return f.read()

    def _check_layout(self) -> None:
        layout = _json_object(self._member_bytes(LAYOUT_FILE, 4096), LAYOUT_FILE)
        if layout.get("imageLayoutVersion") != LAYOUT_VERSION:
            raise BundleError(f"unsupported OCI layout version {layout.get('imageLayoutVersion')!r}")

    def blob_member(self, digest: Digest) -> tarfile.TarInfo | None:
        self.locate([BLOBS_DIR + digest.hex])  # a pass only for a blob no manifest of the index named
        member = self.files.get(BLOBS_DIR + digest.hex)
        return member if member is not None and member.isreg() else None

    def offset_of(self, digest: Digest) -> int:
        """Where the blob's bytes start in the tar: reading blobs in this order reads the file front to back."""
        member = self.blob_member(digest)
        return member.offset_data if member is not None else -1

    def descriptors(self) -> list[Descriptor]:
        index = _json_object(self._member_bytes(INDEX_FILE, MAX_INDEX_BYTES), INDEX_FILE)
        entries = index.get("manifests")
        if not isinstance(entries, list) or not entries:
            raise BundleError("index.json lists no manifests")
        return [_descriptor(entry, n) for n, entry in enumerate(entries, 1)]

    def images(self) -> Iterator[BundleImage]:
        """Each manifest of index.json, read and verified against its descriptor; the blobs they name located."""
        descriptors = self.descriptors()
        self.locate(BLOBS_DIR + desc.digest.hex for desc in descriptors)
        images = [self._image(n, desc) for n, desc in enumerate(descriptors, 1)]
        self.locate(BLOBS_DIR + blob.digest.hex for image in images for blob in image.manifest.blobs())
        yield from images

    def _image(self, n: int, desc: Descriptor) -> BundleImage:
        if desc.media_type not in (OCI_MANIFEST, MANIFEST_V2, ""):  # "": the manifest's own type decides
            raise BundleError(f"index.json entry {n} is {desc.media_type}: only single image manifests "
                              "(Ollama models) can be imported")
        what = f"manifest of index.json entry {n}"
        if desc.size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{what} is larger than {MAX_MANIFEST_BYTES} bytes")
        raw = self.read_blob(desc.digest, desc.size, what)
        return BundleImage(n, desc, raw, parse_image_manifest(raw, f"{what} ({desc.digest})"))

    def read_blob(self, digest: Digest, size: int, what: str) -> bytes:
        """A small blob (a manifest) whole, verified."""
        out = bytearray()
        with self.open_blob(digest, size, what) as src:
            reader = VerifyingReader(src, digest, size, what)
            while block := reader.read(BLOCK):
                out += block
            if not reader.verified:
                reader.check()
        return bytes(out)

    def open_blob(self, digest: Digest, size: int, what: str) -> BinaryIO:
        """The blob's bytes as a file (seekable); BundleError when it is missing or its size is not `size`."""
        member = self.blob_member(digest)
        if member is None:
            raise BundleError(f"the bundle lacks blob {digest} ({what})")
        if member.size != size:
            raise BlobMismatchError(f"blob {digest} ({what}): {member.size} bytes in the bundle, expected {size}")
        f = self.tar.extractfile(member)
        assert f is not None
        return f


def parse_image_manifest(raw: bytes, what: str) -> Manifest:
    """A model's single-image manifest (Docker schema 2 or OCI); BundleError naming `what` otherwise."""
    try:
        manifest = Manifest.parse(raw)
    except ValueError as exc:
        raise BundleError(f"{what}: {exc}") from None
    if manifest.media_type not in (OCI_MANIFEST, MANIFEST_V2):
        raise BundleError(f"{what} is {manifest.media_type}: not a single image manifest")
    return manifest


def _descriptor(entry: object, n: int) -> Descriptor:
    if not isinstance(entry, dict):
        raise BundleError(f"index.json entry {n} is not an object")
    digest, size, annotations = entry.get("digest"), entry.get("size"), entry.get("annotations") or {}
    if not is_digest(digest):
        raise BundleError(f"index.json entry {n}: invalid digest {digest!r} (expected sha256:<64 hex>)")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BundleError(f"index.json entry {n}: invalid size {size!r}")
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        raise BundleError(f"index.json entry {n}: annotations must map names to strings")
    return Descriptor(str(entry.get("mediaType") or ""), Digest.parse(digest), size, dict(annotations))
