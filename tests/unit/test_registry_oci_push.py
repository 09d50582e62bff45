"""The /v2/ push API through Flask's test client: monolithic and chunked uploads, digests checked on the
server, HEAD to skip what exists, manifests refused while a blob is missing, OCI error bodies."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from registry.server import RegistrySettings, create_registry_app

V2 = "application/vnd.docker.distribution.manifest.v2+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def client(tmp_path: Path):
    app = create_registry_app(tmp_path / "store", RegistrySettings(min_free_bytes=0, max_file_bytes=1 << 20,
                                                                   mirror_upstream="none"), background=False)
    return app.test_client()


def assert_oci_error(resp, status: int, code: str) -> None:
    assert resp.status_code == status, resp.data
    assert resp.mimetype == "application/json"
    errors = resp.json["errors"]
    assert errors[0]["code"] == code and errors[0]["message"]


def push_blob(client, repo: str, data: bytes) -> str:
    start = client.post(f"/v2/{repo}/blobs/uploads/")
    assert start.status_code == 202 and start.headers["Docker-Upload-UUID"]
    resp = client.put(f"{start.headers['Location']}?digest={sha(data)}", data=data)
    assert resp.status_code == 201, resp.data
    return resp.headers["Docker-Content-Digest"]


def manifest_of(config: bytes, *layers: bytes, media_type: str = V2) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": media_type,
                       "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                  "digest": sha(config), "size": len(config)},
                       "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": sha(x),
                                   "size": len(x)} for x in layers]}).encode()


def test_monolithic_push_then_head_and_ranged_get(client) -> None:
    data = b"model bytes " * 100
    assert client.head(f"/v2/library/tiny/blobs/{sha(data)}").status_code == 404  # the client's "skip if there"
    assert push_blob(client, "library/tiny", data) == sha(data)
    head = client.head(f"/v2/library/tiny/blobs/{sha(data)}")
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(data))
    assert head.headers["Docker-Content-Digest"] == sha(data) and head.headers["Accept-Ranges"] == "bytes"
    part = client.get(f"/v2/library/tiny/blobs/{sha(data)}", headers={"Range": "bytes=6-10"})
    assert part.status_code == 206 and part.data == data[6:11]
    assert part.headers["Content-Range"] == f"bytes 6-10/{len(data)}"


def test_chunked_push_with_patch_and_a_final_put(client) -> None:
    data = bytes(range(256)) * 40
    start = client.post("/v2/acme/chunky/blobs/uploads/")
    loc = start.headers["Location"]
    first = client.patch(loc, data=data[:4000], headers={"Content-Range": "0-3999"})
    assert first.status_code == 202 and first.headers["Range"] == "0-3999"
    assert client.get(loc).headers["Range"] == "0-3999"  # upload status
    wrong = client.patch(loc, data=data[5000:6000], headers={"Content-Range": "5000-5999"})
    assert_oci_error(wrong, 416, "BLOB_UPLOAD_INVALID")
    assert wrong.headers["Range"] == "0-3999"
    second = client.patch(loc, data=data[4000:8000])  # no Content-Range: appended (docker's streamed PATCH)
    assert second.headers["Range"] == "0-7999"
    done = client.put(f"{loc}?digest={sha(data)}", data=data[8000:])
    assert done.status_code == 201 and done.headers["Location"] == f"/v2/acme/chunky/blobs/{sha(data)}"
    assert client.get(f"/v2/acme/chunky/blobs/{sha(data)}").data == data
    assert_oci_error(client.get(loc), 404, "BLOB_UPLOAD_UNKNOWN")  # the session ended


def test_a_wrong_digest_is_refused_and_nothing_becomes_visible(client) -> None:
    start = client.post("/v2/library/bad/blobs/uploads/")
    resp = client.put(f"{start.headers['Location']}?digest={sha(b'other')}", data=b"these bytes")
    assert_oci_error(resp, 400, "DIGEST_INVALID")
    assert client.head(f"/v2/library/bad/blobs/{sha(b'these bytes')}").status_code == 404
    assert client.head(f"/v2/library/bad/blobs/{sha(b'other')}").status_code == 404


@pytest.mark.parametrize("digest", ["", "sha256:abc", "md5:00", "sha256-" + "a" * 64])
def test_a_bad_or_missing_digest_on_the_final_put(client, digest: str) -> None:
    start = client.post("/v2/library/bad/blobs/uploads/")
    query = f"?digest={digest}" if digest else ""
    assert_oci_error(client.put(f"{start.headers['Location']}{query}", data=b"x"), 400, "DIGEST_INVALID")


def test_post_with_digest_is_a_one_request_upload_and_mount_reuses_a_blob(client) -> None:
    data = b"one shot"
    resp = client.post(f"/v2/library/a/blobs/uploads/?digest={sha(data)}", data=data)
    assert resp.status_code == 201 and resp.headers["Docker-Content-Digest"] == sha(data)
    mounted = client.post(f"/v2/library/b/blobs/uploads/?mount={sha(data)}&from=library/a")
    assert mounted.status_code == 201 and mounted.headers["Location"] == f"/v2/library/b/blobs/{sha(data)}"
    not_here = client.post(f"/v2/library/b/blobs/uploads/?mount={sha(b'absent')}&from=library/a")
    assert not_here.status_code == 202  # not held: an ordinary upload session starts instead


def test_manifest_push_refuses_missing_blobs_then_serves_exactly_what_was_pushed(client) -> None:
    config, layer = b'{"model_format":"gguf"}', b"GGUF" + b"\0" * 60
    manifest = manifest_of(config, layer)
    push_blob(client, "library/tiny", config)
    missing = client.put("/v2/library/tiny/manifests/latest", data=manifest, content_type=V2)
    assert_oci_error(missing, 400, "MANIFEST_BLOB_UNKNOWN")
    assert missing.json["errors"][0]["detail"] == {"digest": sha(layer)}
    push_blob(client, "library/tiny", layer)
    put = client.put("/v2/library/tiny/manifests/latest", data=manifest, content_type=V2)
    assert put.status_code == 201 and put.headers["Docker-Content-Digest"] == sha(manifest)
    for ref in ("latest", sha(manifest)):
        got = client.get(f"/v2/library/tiny/manifests/{ref}", headers={"Accept": V2})
        assert got.status_code == 200 and got.data == manifest and got.mimetype == V2
        assert got.headers["Docker-Content-Digest"] == sha(manifest)
    head = client.head("/v2/library/tiny/manifests/latest")
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(manifest)) and not head.data
    assert client.get("/v2/library/tiny/tags/list").json == {"name": "library/tiny", "tags": ["latest"]}
    assert client.get("/v2/_catalog").json == {"repositories": ["library/tiny"]}


@pytest.mark.parametrize("body, code", [
    (b"not json", "MANIFEST_INVALID"),
    (b'{"schemaVersion": 1}', "MANIFEST_INVALID"),
    (json.dumps({"schemaVersion": 2, "config": {"mediaType": "x", "digest": "sha256:zz", "size": 1},
                 "layers": []}).encode(), "MANIFEST_INVALID"),
    (json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "config": {"mediaType": "x", "digest": "sha256:" + "a" * 64, "size": 1}, "layers": []}).encode(),
     "MANIFEST_INVALID"),
])
def test_bad_manifests_are_oci_errors(client, body: bytes, code: str) -> None:
    assert_oci_error(client.put("/v2/library/x/manifests/latest", data=body, content_type=V2), 400, code)


def test_a_manifest_put_by_digest_must_match_its_bytes(client) -> None:
    config = b"{}"
    push_blob(client, "library/x", config)
    manifest = manifest_of(config)
    resp = client.put(f"/v2/library/x/manifests/{sha(b'something else')}", data=manifest, content_type=V2)
    assert_oci_error(resp, 400, "DIGEST_INVALID")
    assert client.put(f"/v2/library/x/manifests/{sha(manifest)}", data=manifest, content_type=V2).status_code == 201


def test_an_upload_can_be_cancelled_and_unknown_sessions_are_oci_errors(client) -> None:
    loc = client.post("/v2/library/x/blobs/uploads/").headers["Location"]
    assert client.delete(loc).status_code == 204
    assert_oci_error(client.patch(loc, data=b"x"), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_oci_error(client.patch("/v2/library/x/blobs/uploads/..", data=b"x"), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_oci_error(client.put("/v2/library/x/blobs/uploads/not-a-uuid?digest=" + sha(b"")), 404,
                     "BLOB_UPLOAD_UNKNOWN")


def test_a_blob_over_the_size_limit_is_refused(client) -> None:
    loc = client.post("/v2/library/x/blobs/uploads/").headers["Location"]
    big = b"\0" * ((1 << 20) + 1)
    resp = client.put(f"{loc}?digest={sha(big)}", data=big)
    assert_oci_error(resp, 413, "SIZE_INVALID")


def test_a_manifest_over_4_mib_is_refused_unread(client) -> None:
    resp = client.put("/v2/library/x/manifests/latest", data=b"{" + b" " * (4 << 20) + b"}", content_type=V2)
    assert_oci_error(resp, 413, "MANIFEST_INVALID")
