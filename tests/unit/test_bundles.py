"""Portable bundles without a network: the OCI layout written and read, digests checked while streaming,
an import refused whole, resumed where it stopped (a hand-written in-memory registry, no mocks)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from eldric.cli import build_parser
from eldric.client.bundles import ImportState, export_bundle, import_bundle, model_reference, name_of
from eldric.transfer.oci_client import OciClientError as DistributionError
from eldric.core.digests import Digest
from eldric.core.errors import InvalidNameError
from eldric.core.manifests import CONFIG, MANIFEST_V2, OCI_MANIFEST, OLLAMA_MODEL, OLLAMA_TEMPLATE
from eldric.core.oci_layout import (IMAGE_NAME, KEPT_BLOB_HEADERS, OCI_CONFIG, REF_NAME, BlobMismatchError, BundleError, BundleImage,
                                    Descriptor, LayoutReader, LayoutWriter, to_docker_manifest, to_oci_manifest)

BLOCK = 1 << 20


class PatternBlob:
    """`size` bytes of a repeating pseudo-random pattern, produced block by block (never held whole)."""

    def __init__(self, size: int, seed: int = 1) -> None:
        self.size = size
        self.pattern = hashlib.sha256(str(seed).encode()).digest() * (BLOCK // 32)
        self.digest = self._hash()

    def reader(self, start: int = 0) -> io.RawIOBase:
        blob = self

        class Reader(io.RawIOBase):
            pos = start

            def readable(self) -> bool:
                return True

            def read(self, n: int = -1) -> bytes:
                n = blob.size - self.pos if n is None or n < 0 else min(n, blob.size - self.pos)
                n = min(n, BLOCK)
                off = self.pos % BLOCK
                data = (blob.pattern[off:] + blob.pattern[:off])[:n]
                self.pos += len(data)
                return data
        return Reader()

    def _hash(self) -> Digest:
        h, r = hashlib.sha256(), self.reader()
        while block := r.read(BLOCK):
            h.update(block)
        return Digest(h.hexdigest())


class Breaking:
    """A response body whose connection breaks after `limit` bytes."""

    def __init__(self, raw, limit: int) -> None:
        self.raw, self.left = raw, limit

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            raise ConnectionResetError("connection reset by peer")
        data = self.raw.read(min(n, self.left) if n and n > 0 else self.left)
        self.left -= len(data)
        return data


class FakeRegistry:
    """What the data node's /v2/ does, in memory: blobs by digest (bytes, or a PatternBlob), upload sessions
    that hash what they receive, manifests by repository and tag. Records each PATCH (location, start, length)."""

    def __init__(self, base: str = "http://fake") -> None:
        self.base = base
        self.blobs: dict[str, bytes | PatternBlob] = {}
        self.repos: dict[str, set[str]] = {}  # repository -> blob digests it links
        self.manifests: dict[tuple[str, str], bytes] = {}
        self.sessions: dict[str, dict] = {}
        self.patches: list[tuple[str, int, int]] = []
        self.corrupt: set[str] = set()  # digests served with one byte flipped
        self.fail_patch_after: int | None = None  # raise KeyboardInterrupt at this PATCH number
        self.calls = 0
        self.started = 0
        self.opened: list[tuple[str, int]] = []  # (digest, start) of each blob GET
        self.break_after: dict[str, int] = {}

    # seeding
    def add_blob(self, data: bytes | PatternBlob, repo: str) -> dict:
        digest = data.digest if isinstance(data, PatternBlob) else Digest.of_bytes(data)
        self.blobs[str(digest)] = data
        self.repos.setdefault(repo, set()).add(str(digest))
        size = data.size if isinstance(data, PatternBlob) else len(data)
        return {"digest": str(digest), "size": size}

    def add_model(self, repo: str, tag: str, model: bytes | PatternBlob, template: bytes = b"{{ .Prompt }}") -> bytes:
        config = self.add_blob(json.dumps({"model_format": "gguf", "os": "linux", "architecture": "amd64",
                                           "rootfs": {"type": "layers"}}).encode(), repo)
        layers = [{"mediaType": OLLAMA_MODEL, **self.add_blob(model, repo)},
                  {"mediaType": OLLAMA_TEMPLATE, **self.add_blob(template, repo)}]
        raw = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_V2,
                          "config": {"mediaType": CONFIG, **config}, "layers": layers}).encode()
        self.manifests[(repo, tag)] = raw
        return raw

    # the DistributionClient interface
    def check(self) -> None:
        self.calls += 1

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str]:
        self.calls += 1
        if (repo, reference) not in self.manifests:
            raise DistributionError(f"GET /v2/{repo}/manifests/{reference}: HTTP 404: manifest unknown", 404)
        return self.manifests[(repo, reference)], MANIFEST_V2

    def open_blob(self, repo: str, digest: Digest, start: int = 0):
        self.calls += 1
        self.opened.append((str(digest), start))
        data = self.blobs[str(digest)]
        if isinstance(data, PatternBlob):
            raw = data.reader(start)
        else:
            if str(digest) in self.corrupt:
                data = bytes([data[0] ^ 1]) + data[1:]
            raw = io.BytesIO(data[start:])
        if str(digest) in self.break_after:  # the connection drops once after this many bytes
            raw = Breaking(raw, self.break_after.pop(str(digest)))

        class Response:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return None

            def close(self):
                return None
        resp = Response()
        resp.raw = raw
        return resp

    def has_blob(self, repo: str, digest: Digest) -> bool:
        self.calls += 1
        return str(digest) in self.repos.get(repo, set())

    def mount_blob(self, repo: str, digest: Digest, from_repo: str) -> str | None:
        self.calls += 1
        self.repos.setdefault(repo, set()).add(str(digest))
        return None

    def start_upload(self, repo: str) -> str:
        self.calls += 1
        self.started += 1
        location = f"{self.base}/v2/{repo}/blobs/uploads/{self.started}"
        self.sessions[location] = {"repo": repo, "hasher": hashlib.sha256(), "size": 0}
        return location

    def upload_offset(self, location: str, known: int = 0) -> int | None:
        session = self.sessions.get(location)
        return None if session is None else session["size"]

    def send_chunk(self, location: str, body, start: int, length: int) -> str:
        self.calls += 1
        if self.fail_patch_after is not None and len(self.patches) >= self.fail_patch_after:
            raise KeyboardInterrupt
        session = self.sessions[location]
        assert start == session["size"], (start, session["size"])
        assert len(body) == length
        self.patches.append((location, start, length))
        got = 0
        while block := body.read(BLOCK):
            session["hasher"].update(block)
            got += len(block)
        session["size"] += got
        return location

    def finish_upload(self, location: str, digest: Digest) -> None:
        session = self.sessions.pop(location)
        if session["hasher"].hexdigest() != digest.hex:
            raise DistributionError("DIGEST_INVALID", 400)
        self.blobs[str(digest)] = b"(received)"
        self.repos.setdefault(session["repo"], set()).add(str(digest))

    def cancel_upload(self, location: str) -> None:
        self.sessions.pop(location, None)

    def put_manifest(self, repo: str, tag: str, raw: bytes, media_type: str) -> str:
        doc = json.loads(raw)
        assert media_type == doc["mediaType"] == MANIFEST_V2
        for d in [doc["config"], *doc["layers"]]:
            assert d["digest"] in self.repos.get(repo, set()), f"MANIFEST_BLOB_UNKNOWN {d['digest']}"
        self.manifests[(repo, tag)] = raw
        return str(Digest.of_bytes(raw))


@pytest.fixture
def source() -> FakeRegistry:
    reg = FakeRegistry("http://source")
    reg.add_model("library/tiny", "latest", b"GGUF tiny model bytes" * 100)
    reg.add_model("acme/house", "v1", b"GGUF house model bytes" * 50, template=b"{{ .Prompt }}")  # shares the template
    return reg


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_export_writes_a_valid_oci_layout(source: FakeRegistry, tmp_path: Path) -> None:
    out = tmp_path / "site.tar"
    result = export_bundle(source, ["tiny", "acme/house:v1", "tiny:latest"], out)
    files = members(out)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    with tarfile.open(out) as tar:
        assert tar.getnames()[:2] == ["oci-layout", "index.json"]  # a streaming reader meets the index first
    index = json.loads(files["index.json"])
    assert [d["annotations"] for d in index["manifests"]] == [
        {REF_NAME: "library/tiny:latest", IMAGE_NAME: "registry.ollama.ai/library/tiny:latest"},
        {REF_NAME: "acme/house:v1", IMAGE_NAME: "registry.ollama.ai/acme/house:v1"}]
    for name, data in files.items():  # every blob is named by its sha256
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    for entry, key in zip(index["manifests"], [("library/tiny", "latest"), ("acme/house", "v1")], strict=True):
        assert entry["mediaType"] == OCI_MANIFEST
        raw = files["blobs/sha256/" + entry["digest"].split(":")[1]]
        assert len(raw) == entry["size"]
        doc = json.loads(raw)
        assert doc["mediaType"] == OCI_MANIFEST and doc["config"]["mediaType"] == OCI_CONFIG
        assert to_docker_manifest(raw) == source.manifests[key]  # the same bytes come back on import
        for d in doc["layers"]:
            assert "blobs/sha256/" + d["digest"].split(":")[1] in files
    assert sum(name.startswith("blobs/sha256/") for name in files) == result["blobs"] == 6  # 2 manifests, 2 models; config and template once
    assert [m["digest"] for m in result["models"]] == [str(Digest.of_bytes(source.manifests[k]))
                                                      for k in [("library/tiny", "latest"), ("acme/house", "v1")]]


def test_export_refuses_a_blob_the_registry_serves_wrong_and_leaves_no_file(source: FakeRegistry, tmp_path: Path):
    model_digest = json.loads(source.manifests[("library/tiny", "latest")])["layers"][0]["digest"]
    source.corrupt.add(model_digest)
    out = tmp_path / "site.tar"
    with pytest.raises(BlobMismatchError, match=f"blob {model_digest} \\(layer {OLLAMA_MODEL} of tiny:latest\\)"):
        export_bundle(source, ["tiny"], out)
    assert list(tmp_path.iterdir()) == []


def test_export_goes_on_after_a_dropped_connection_with_a_range(tmp_path: Path) -> None:
    big = PatternBlob(3 << 20, seed=3)
    source = FakeRegistry()
    source.add_model("library/big", "latest", big)
    source.break_after[str(big.digest)] = (1 << 20) + 5
    export_bundle(source, ["big"], tmp_path / "big.tar", sleep=lambda s: None)
    assert [start for digest, start in source.opened if digest == str(big.digest)] == [0, (1 << 20) + 5]
    with open(tmp_path / "big.tar", "rb") as f:
        reader = LayoutReader(f)
        assert [image.manifest.layers[0].digest for image in reader.images()] == [big.digest]
        assert reader.blob_member(big.digest).size == big.size


def test_export_of_a_missing_model_names_it(source: FakeRegistry, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="nope:latest: not on the data node"):
        export_bundle(source, ["nope"], tmp_path / "x.tar")


def test_round_trip_into_another_registry_keeps_every_digest(source: FakeRegistry, tmp_path: Path) -> None:
    export_bundle(source, ["tiny", "acme/house:v1"], tmp_path / "site.tar")
    target = FakeRegistry()
    result = import_bundle(target, tmp_path / "site.tar", tmp_path / "state")
    assert target.manifests == source.manifests
    assert [m["digest"] for m in result["models"]] == [str(Digest.of_bytes(r)) for r in source.manifests.values()]
    assert result["sent_blobs"] == 4 and result["skipped_blobs"] == 0  # shared ones mounted
    assert not list((tmp_path / "state").glob("*.json"))  # nothing left to resume


def tamper(path: Path, digest: str) -> None:
    """Flip one byte of a blob inside the tar, keeping its size: only a digest check can notice."""
    with tarfile.open(path) as tar:
        offset = tar.getmember("blobs/sha256/" + digest.split(":")[1]).offset_data
    with open(path, "r+b") as f:
        f.seek(offset + 3)
        b = f.read(1)
        f.seek(offset + 3)
        f.write(bytes([b[0] ^ 0xFF]))


def test_tampered_bundle_is_refused_whole_naming_the_blob(source: FakeRegistry, tmp_path: Path) -> None:
    bundle = tmp_path / "site.tar"
    export_bundle(source, ["tiny", "acme/house:v1"], bundle)
    bad = json.loads(source.manifests[("acme/house", "v1")])["layers"][0]["digest"]
    tamper(bundle, bad)
    target = FakeRegistry()
    with pytest.raises(BlobMismatchError) as caught:
        import_bundle(target, bundle, tmp_path / "state")
    assert f"blob {bad} (layer {OLLAMA_MODEL} of acme/house:v1): its bytes have sha256:" in str(caught.value)
    assert target.manifests == {}  # not even tiny, whose blobs were fine
    assert target.sessions == {}  # the bad upload was dropped, never closed
    assert bad not in target.blobs


def test_missing_blob_or_wrong_size_is_refused_before_anything_is_sent(source: FakeRegistry, tmp_path: Path):
    bundle = tmp_path / "site.tar"
    export_bundle(source, ["tiny"], bundle)
    files = members(bundle)
    model = json.loads(source.manifests[("library/tiny", "latest")])["layers"][0]["digest"].split(":")[1]
    for case, edit in [("lacks blob", lambda f: f.pop("blobs/sha256/" + model)),
                       ("bytes in the bundle, expected", lambda f: f.update({"blobs/sha256/" + model: b"short"}))]:
        broken = dict(files)
        edit(broken)
        path = write_tar(tmp_path / f"{case.split()[0]}.tar", broken)
        target = FakeRegistry()
        with pytest.raises(BundleError, match=case):
            import_bundle(target, path, tmp_path / "state")
        assert target.calls == 0


def test_not_a_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    path.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(BundleError, match=r"not a tar file|no file oci-layout"):
        import_bundle(FakeRegistry(), path, tmp_path / "state")


def test_a_large_blob_streams_in_constant_memory(tmp_path: Path) -> None:
    big = PatternBlob(96 << 20)
    source = FakeRegistry()
    source.add_model("library/big", "latest", big)
    tracemalloc.start()
    try:
        export_bundle(source, ["big"], tmp_path / "big.tar")
        _, export_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        target = FakeRegistry()
        result = import_bundle(target, tmp_path / "big.tar", tmp_path / "state", chunk_bytes=32 << 20)
        _, import_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (tmp_path / "big.tar").stat().st_size > big.size
    assert result["sent_bytes"] == big.size + sum(len(b) for b in source.blobs.values() if isinstance(b, bytes))
    assert [p[1:] for p in target.patches if p[2] > 1000] == [(0, 32 << 20), (32 << 20, 32 << 20), (64 << 20, 32 << 20)]
    assert export_peak < 8 << 20 and import_peak < 8 << 20, (export_peak, import_peak)


def test_interrupted_import_resumes_without_resending(tmp_path: Path) -> None:
    big = PatternBlob(5 << 20, seed=7)
    source = FakeRegistry()
    source.add_model("library/big", "latest", big, template=b"T")
    bundle = tmp_path / "big.tar"
    export_bundle(source, ["big"], bundle)  # blobs in file order: config, model layer, template
    target = FakeRegistry()
    target.fail_patch_after = 4  # the config in one PATCH, 3 MiB of the model layer, then Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        import_bundle(target, bundle, tmp_path / "state", chunk_bytes=1 << 20)
    assert target.manifests == {}  # nothing visible yet
    first = list(target.patches)
    assert [start for _, start, length in first if length == 1 << 20] == [0, 1 << 20, 2 << 20]
    target.fail_patch_after = None
    result = import_bundle(target, bundle, tmp_path / "state", chunk_bytes=1 << 20)
    again = target.patches[len(first):]
    assert [(start, length) for _, start, length in again] == [(3 << 20, 1 << 20), (4 << 20, 1 << 20), (0, 1)]
    assert {loc for loc, start, _ in again if start} == {loc for loc, start, length in first if length == 1 << 20}
    assert result["resumed_bytes"] == 3 << 20 and result["skipped_blobs"] == 1  # the config was finished
    assert result["sent_bytes"] == (2 << 20) + 1
    assert target.manifests[("library/big", "latest")] == source.manifests[("library/big", "latest")]


def test_blobs_the_registry_holds_are_skipped_by_head(source: FakeRegistry, tmp_path: Path) -> None:
    export_bundle(source, ["tiny"], tmp_path / "site.tar")
    target = FakeRegistry()
    tiny = json.loads(source.manifests[("library/tiny", "latest")])
    target.repos["library/tiny"] = {tiny["layers"][0]["digest"]}
    result = import_bundle(target, tmp_path / "site.tar", tmp_path / "state")
    assert result["skipped_blobs"] == 1 and result["sent_blobs"] == 2
    assert all(p[2] < 1000 for p in target.patches)  # the model layer's bytes were never sent


def test_skopeo_style_bundle_with_index_last_imports(source: FakeRegistry, tmp_path: Path) -> None:
    """As skopeo writes it: blobs first, index.json and oci-layout last, ref.name as given, no index mediaType."""
    raw = to_oci_manifest(source.manifests[("library/tiny", "latest")])
    doc = json.loads(raw)
    files = {"blobs/sha256/" + Digest.of_bytes(raw).hex: raw}
    for d in [doc["config"], *doc["layers"]]:
        files["blobs/sha256/" + d["digest"].split(":")[1]] = source.blobs[d["digest"]]
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": str(Digest.of_bytes(raw)), "size": len(raw),
         "annotations": {REF_NAME: "library/x:latest"}}]}).encode()
    files["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    path = write_tar(tmp_path / "skopeo.tar", files)
    target = FakeRegistry()
    import_bundle(target, path, tmp_path / "state")
    assert target.manifests == {("library/x", "latest"): source.manifests[("library/tiny", "latest")]}


@pytest.mark.parametrize("extra", [10, KEPT_BLOB_HEADERS + 10])
def test_a_bundle_of_many_members_imports_and_keeps_only_what_it_reads(source: FakeRegistry, tmp_path: Path,
                                                                       extra: int) -> None:
    """Blobs before index.json (skopeo's order) and unreferenced members past the headers the first pass keeps."""
    raw = to_oci_manifest(source.manifests[("library/tiny", "latest")])
    doc = json.loads(raw)
    files = {f"blobs/sha256/{i:064x}": b"" for i in range(extra)}
    files["blobs/sha256/" + Digest.of_bytes(raw).hex] = raw
    for d in [doc["config"], *doc["layers"]]:
        files["blobs/sha256/" + d["digest"].split(":")[1]] = source.blobs[d["digest"]]
    files["index.json"] = json.dumps({"manifests": [{"mediaType": OCI_MANIFEST, "digest": str(Digest.of_bytes(raw)),
                                                     "size": len(raw), "annotations": {REF_NAME: "library/x:1"}}]}).encode()
    files["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    path = write_tar(tmp_path / "many.tar", files)
    target = FakeRegistry()
    import_bundle(target, path, tmp_path / "state")
    assert target.manifests == {("library/x", "1"): source.manifests[("library/tiny", "latest")]}
    with open(path, "rb") as f:
        reader = LayoutReader(f)
        list(reader.images())
        kept = len(reader.files) + len(reader.tar.members)
    assert kept <= 2 + 1 + 1 + len(doc["layers"]) + (extra if extra <= KEPT_BLOB_HEADERS else 0) + 1


def test_a_name_the_reader_needs_twice_is_refused(source: FakeRegistry, tmp_path: Path) -> None:
    path = write_tar(tmp_path / "twice.tar", {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
                                              "index.json": b'{"manifests": []}', "./index.json": b"{}"})
    with open(path, "rb") as f, pytest.raises(BundleError, match=r"holds index\.json twice"):
        LayoutReader(f)


@pytest.mark.parametrize("annotations, override, name", [
    ({IMAGE_NAME: "registry.ollama.ai/library/a:1", REF_NAME: "library/b:2"}, None, "registry.ollama.ai/library/a:1"),
    ({REF_NAME: "library/b:2"}, None, "library/b:2"),
    ({REF_NAME: "b:2"}, None, "b:2"),
    ({REF_NAME: "latest"}, "c:3", "c:3"),
    ({}, "c:3", "c:3"),
])
def test_the_name_an_entry_carries(annotations, override, name) -> None:
    image = BundleImage(1, Descriptor(OCI_MANIFEST, Digest("0" * 64), 1, annotations), b"", None)
    assert name_of(image, override) == name


@pytest.mark.parametrize("annotations", [{REF_NAME: "latest"}, {}])
def test_an_entry_without_a_model_name_needs_name(annotations) -> None:
    image = BundleImage(3, Descriptor(OCI_MANIFEST, Digest("0" * 64), 1, annotations), b"", None)
    with pytest.raises(BundleError, match=r"index\.json entry 3 .* give the model's name with --name"):
        name_of(image, None)


@pytest.mark.parametrize("raw, repo, tag", [
    ("qwen2.5:0.5b", "library/qwen2.5", "0.5b"),
    ("tiny", "library/tiny", "latest"),
    ("acme/house:v1", "acme/house", "v1"),
    ("registry.ollama.ai/library/x:y", "library/x", "y"),
])
def test_model_names_map_to_repositories_as_ollama_and_the_data_node_do(raw, repo, tag) -> None:
    assert model_reference(raw)[1:] == (repo, tag)


@pytest.mark.parametrize("raw, error", [("hf.co/a/b:c", BundleError), ("../x", InvalidNameError)])
def test_other_names_are_refused(raw, error) -> None:
    with pytest.raises(error):
        model_reference(raw)


def test_media_type_conversion_is_byte_exact_both_ways() -> None:
    compact = (b'{"schemaVersion":2,"mediaType":"' + MANIFEST_V2.encode() + b'","config":{"mediaType":"'
               + CONFIG.encode() + b'","digest":"sha256:' + b"a" * 64 + b'","size":3},"layers":[]}')
    oci = to_oci_manifest(compact)
    assert json.loads(oci)["mediaType"] == OCI_MANIFEST and json.loads(oci)["config"]["mediaType"] == OCI_CONFIG
    assert to_docker_manifest(oci) == compact
    assert to_oci_manifest(oci) == oci and to_docker_manifest(compact) == compact  # already in the wanted form
    escaped = compact.replace(b'"mediaType":"application/vnd.docker.distribution', b'"mediaType":"application\\/vnd.docker.distribution')
    assert json.loads(to_oci_manifest(escaped))["mediaType"] == OCI_MANIFEST  # odd spelling: same document, new bytes


def test_resume_state_is_per_bundle_and_registry(tmp_path: Path) -> None:
    bundle = tmp_path / "b.tar"
    bundle.write_bytes(b"x")
    a = ImportState.load(tmp_path / "s", "http://one", bundle)
    a.save("library/x@sha256:" + "1" * 64, "http://one/v2/library/x/blobs/uploads/u1", 5)
    assert ImportState.load(tmp_path / "s", "http://one", bundle).uploads == a.uploads
    assert ImportState.load(tmp_path / "s", "http://two", bundle).uploads == {}


def test_reader_checks_manifest_digest(source: FakeRegistry, tmp_path: Path) -> None:
    bundle = tmp_path / "site.tar"
    export_bundle(source, ["tiny"], bundle)
    index = json.loads(members(bundle)["index.json"])
    tamper(bundle, index["manifests"][0]["digest"])
    with open(bundle, "rb") as f, pytest.raises(BlobMismatchError, match=r"manifest of index\.json entry 1"):
        list(LayoutReader(f).images())


@pytest.mark.parametrize("descriptor_type, manifest_type, error", [
    ("application/vnd.oci.image.index.v1+json", OCI_MANIFEST, "only single image manifests"),
    ("", "application/vnd.oci.image.index.v1+json", "not a single image manifest"),
])
def test_image_indexes_are_refused(tmp_path: Path, descriptor_type: str, manifest_type: str, error: str) -> None:
    raw = json.dumps({"schemaVersion": 2, "mediaType": manifest_type, "config": {
        "mediaType": OCI_CONFIG, "digest": "sha256:" + "a" * 64, "size": 1}, "layers": []}).encode()
    index = {"schemaVersion": 2, "manifests": [{"mediaType": descriptor_type, "digest": str(Digest.of_bytes(raw)),
                                                "size": len(raw), "annotations": {REF_NAME: "library/x:1"}}]}
    path = write_tar(tmp_path / "x.tar", {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
                                          "index.json": json.dumps(index).encode(),
                                          "blobs/sha256/" + Digest.of_bytes(raw).hex: raw})
    target = FakeRegistry()
    with pytest.raises(BundleError, match=error):
        import_bundle(target, path, tmp_path / "state")
    assert target.calls == 0


def test_members_over_8_gib_get_a_size_a_tar_reader_reads() -> None:
    """ustar's size field ends below 8 GiB; model layers do not (a 70B model's is about 40 GB)."""
    out = io.BytesIO()
    writer = LayoutWriter(out)
    size = (9 << 30) + 5
    writer.tar.addfile(writer._info("blobs/sha256/" + "b" * 64, size))  # the header alone: no 9 GiB in a test
    writer.close()
    with tarfile.open(fileobj=io.BytesIO(out.getvalue()), mode="r|") as tar:
        assert tar.next().size == size


def test_import_refuses_a_chunk_size_below_one() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["import", "x.tar", "--chunk-size", "0"])
