"""The registry's HTTP API through Flask's test client (no sockets): status codes, headers, error shape."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from eldric.core.settings import parse_size
from registry.server import RegistrySettings, create_registry_app
from testbed.gguf_models import write_llama_gguf

API = "/api/v1/model-registry"


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> bytes:
    return write_llama_gguf(tmp_path_factory.mktemp("g") / "tiny.gguf").read_bytes()


@pytest.fixture
def client(tmp_path: Path):
    app = create_registry_app(tmp_path / "store", RegistrySettings(min_free_bytes=0, max_file_bytes=1 << 20),
                              background=False)
    return app.test_client()


@pytest.fixture
def model(client, gguf_bytes: bytes) -> dict:
    resp = client.post(f"{API}/upload?name=tiny&filename=tiny.gguf", data=gguf_bytes)
    assert resp.status_code == 201, resp.json
    return resp.json


def assert_problem(resp, code: int, field: str | None = None) -> None:
    assert resp.status_code == code, resp.json
    body = resp.json
    assert body["code"] == code and body["status"] and body["message"]
    if field:
        assert field in body["errors"], body


def test_upload_answers_201_with_location(client, model: dict) -> None:
    assert model["links"]["self"] == f"{API}/{model['id']}"
    listed = client.get(API).json
    assert listed["total"] == 1 and listed["models"][0]["reference"] == "tiny:v1"
    assert client.get(f"{API}?format=safetensors").json["total"] == 0
    assert client.get(f"{API}?limit=1&offset=1").json["models"] == []


@pytest.mark.parametrize("range_header, status, body_slice, content_range", [
    ("bytes=0-3", 206, slice(0, 4), "bytes 0-3/{n}"),
    ("bytes=-10", 206, slice(-10, None), "bytes {a}-{b}/{n}"),
    ("bytes=100-", 206, slice(100, None), "bytes 100-{b}/{n}"),
    (None, 200, slice(None), None),
])
def test_range_downloads(client, model: dict, gguf_bytes: bytes, range_header, status, body_slice,
                         content_range) -> None:
    headers = {"Range": range_header} if range_header else {}
    resp = client.get(f"{API}/{model['id']}/files/tiny.gguf", headers=headers)
    n = len(gguf_bytes)
    assert resp.status_code == status and resp.data == gguf_bytes[body_slice]
    assert resp.headers["ETag"] == f'"sha256:{hashlib.sha256(gguf_bytes).hexdigest()}"'
    assert resp.headers["Accept-Ranges"] == "bytes"
    if content_range:
        assert resp.headers["Content-Range"] == content_range.format(n=n, a=n - 10, b=n - 1)


def test_bad_ranges_and_conditionals(client, model: dict, gguf_bytes: bytes) -> None:
    url = f"{API}/{model['id']}/files/tiny.gguf"
    resp = client.get(url, headers={"Range": f"bytes={len(gguf_bytes)}-"})
    assert_problem(resp, 416)
    assert resp.headers["Content-Range"] == f"bytes */{len(gguf_bytes)}"
    assert_problem(client.get(url, headers={"Range": "bytes=0-1,4-5"}), 416)
    etag = client.get(url).headers["ETag"]
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    stale = client.get(url, headers={"Range": "bytes=0-3", "If-Range": '"sha256:old"'})
    assert stale.status_code == 200 and len(stale.data) == len(gguf_bytes)
    head = client.head(url)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(gguf_bytes)) and head.data == b""
    assert_problem(client.get(f"{API}/{model['id']}/files/other.gguf"), 404, "path")


@pytest.mark.parametrize("query, code, field", [
    ("name=x&filename=../x.gguf", 400, "filename"),
    ("name=x&filename=/etc/passwd", 400, "filename"),
    ("name=x&filename=a%5Cb.gguf", 400, "filename"),
    ("name=x&filename=a%00.gguf", 400, "filename"),
    ("name=../x&filename=x.gguf", 400, "name"),
    ("name=x&filename=x.gguf&digest=md5:abc", 400, "digest"),
    ("name=x&filename=x.gguf&format=zip", 422, None),
    ("filename=x.gguf", 422, None),
])
def test_bad_upload_requests(client, gguf_bytes: bytes, query: str, code: int, field: str | None) -> None:
    assert_problem(client.post(f"{API}/upload?{query}", data=gguf_bytes), code, field)
    assert client.get(API).json["total"] == 0


def test_wrong_format_is_422_and_too_large_is_413(client, gguf_bytes: bytes) -> None:
    resp = client.post(f"{API}/upload?name=x&filename=x.gguf", data=b"\x7fELF" + b"\0" * 100)
    assert_problem(resp, 422, "file")
    assert "not a GGUF file" in resp.json["message"]
    assert_problem(client.post(f"{API}/upload?name=x&filename=x.gguf", data=b"GGUF" + b"\0" * (1 << 20)), 413)
    assert client.get(API).json["total"] == 0 and client.get(f"{API}?state=draft").json["total"] == 0


def test_upload_session_protocol(client, gguf_bytes: bytes) -> None:
    draft = client.post(API, json={"name": "acme/sessions", "version": "1.0"}).json
    resp = client.post(f"{API}/{draft['id']}/uploads", json={"path": "tiny.gguf", "size": len(gguf_bytes)})
    assert resp.status_code == 201 and resp.headers["Upload-Offset"] == "0"
    location = resp.headers["Location"]
    resp = client.patch(location, data=gguf_bytes[:5000], headers={"Content-Range": "bytes 0-4999/*"})
    assert resp.status_code == 202 and resp.json["offset"] == 5000 and resp.headers["Range"] == "0-4999"
    resp = client.patch(location, data=gguf_bytes[4000:6000], headers={"Content-Range": "bytes 4000-5999/*"})
    assert_problem(resp, 416)
    assert resp.headers["Upload-Offset"] == "5000"
    resp = client.patch(location, data=gguf_bytes[5000:6000], headers={"Content-Range": "5000-5999"})  # OCI form
    assert resp.status_code == 202
    offset = client.get(location).json["offset"]
    assert offset == 6000
    resp = client.patch(location, data=gguf_bytes[offset:9000], headers={"Upload-Offset": str(offset)})
    assert resp.json["offset"] == 9000
    assert_problem(client.patch(location, data=b"xx", headers={"Content-Range": "bytes 9000-9009/*"}), 400)
    digest = "sha256:" + hashlib.sha256(gguf_bytes).hexdigest()
    resp = client.put(f"{location}?digest={digest}", data=gguf_bytes[9000:])
    assert resp.status_code == 201 and resp.json["sha256"] == digest
    committed = client.post(f"{API}/{draft['id']}/commit").json
    assert committed["reference"] == "acme/sessions:1.0" and committed["state"] == "ready"
    assert_problem(client.post(f"{API}/{draft['id']}/commit"), 409)
    assert client.get(location).status_code == 404


def test_training_registration(client, gguf_bytes: bytes) -> None:
    assert_problem(client.post(f"{API}/training", json={"name": "ft", "base_model": "tiny"}), 422)
    draft = client.post(f"{API}/training", json={"name": "ft", "base_model": "tiny:v1", "run_id": "r-7",
                                                 "lineage": {"dataset": "support-tickets"}}).json
    assert draft["source"] == "training" and draft["state"] == "draft"
    client.put(f"{API}/{draft['id']}/files/ft.gguf", data=gguf_bytes)
    model = client.post(f"{API}/{draft['id']}/commit").json
    assert model["lineage"] == {"dataset": "support-tickets", "base_model": "tiny:v1", "run_id": "r-7"}


def test_delete_and_unknown_routes(client, model: dict) -> None:
    assert client.delete(f"{API}/{model['id']}").status_code == 204
    assert_problem(client.get(f"{API}/{model['id']}"), 404)
    assert_problem(client.delete(f"{API}/{model['id']}"), 404)
    assert_problem(client.get("/nope"), 404)
    assert_problem(client.post(f"{API}/storage"), 405)


def test_storage_and_openapi(client) -> None:
    storage = client.get(f"{API}/storage").json
    assert storage["fingerprint_file"] == ".eldric-fingerprint" and len(storage["fingerprint"]) == 32
    assert f"{API}/uploads/{{upload_id}}" in client.get("/openapi.json").json["paths"]


def test_bearer_token(tmp_path: Path) -> None:
    app = create_registry_app(tmp_path / "s", RegistrySettings(min_free_bytes=0, token="s3cret"), background=False)
    c = app.test_client()
    assert_problem(c.get(API), 401)
    assert c.get(API, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/healthz").status_code == 200


@pytest.mark.parametrize("raw, expected", [("1048576", 1 << 20), ("512M", 512 << 20), ("20G", 20 << 30),
                                           ("1TiB", 1 << 40), ("64k", 64 << 10)])
def test_parse_size(raw: str, expected: int) -> None:
    assert parse_size(raw) == expected


def test_parse_size_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        parse_size("lots")


# Issue 11 (hardening) -----------------------------------------------------------------------------

def names_field(body: dict, field: str) -> bool:
    """Whether the error body's `errors` name `field` (top level, or under json/query as flask-smorest puts it)."""
    errors = body.get("errors") or {}
    return field in errors or any(field in (errors.get(where) or {}) for where in ("json", "query"))


def test_conflicting_paths_are_409_naming_both_and_commit_builds_the_whole_tree(client, tmp_path: Path) -> None:
    draft = client.post(API, json={"name": "nine", "format": "other"}).json
    paths = ["a.txt", "b.txt", "c.txt", "d/e.txt", "d/f.txt", "g.txt", "h.txt", "i.txt", "ok.txt"]
    for path in paths:
        assert client.put(f"{API}/{draft['id']}/files/{path}", data=path.encode()).status_code == 201
    resp = client.put(f"{API}/{draft['id']}/files/ok.txt/inner", data=b"inner")
    assert_problem(resp, 409, "path")
    assert "'ok.txt'" in resp.json["message"] and "'ok.txt/inner'" in resp.json["message"]
    assert_problem(client.post(f"{API}/{draft['id']}/uploads", json={"path": "d/e.txt/x"}), 409, "path")
    model = client.post(f"{API}/{draft['id']}/commit").json
    assert model["state"] == "ready" and len(model["files"]) == 9
    tree = tmp_path / "store" / model["storage"]["tree"]
    assert sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file()) == sorted(paths)


def test_commit_of_a_draft_whose_bytes_are_gone_is_409_and_it_stays_a_draft(client, tmp_path: Path) -> None:
    draft = client.post(API, json={"name": "gone", "format": "other"}).json
    entry = client.put(f"{API}/{draft['id']}/files/weights.bin", data=b"w" * 100).json
    (tmp_path / "store" / entry["location"]).unlink()
    resp = client.post(f"{API}/{draft['id']}/commit")
    assert_problem(resp, 409, "files")
    assert "weights.bin" in resp.json["message"]
    assert client.get(f"{API}/{draft['id']}").json["state"] == "draft" and client.get(API).json["total"] == 0
    assert list((tmp_path / "store" / "trees").iterdir()) == []


@pytest.mark.parametrize("query, field", [
    ("offset=100000000000000000000", "offset"), ("offset=2147483648", "offset"), ("offset=-1", "offset"),
    ("limit=100000000000000000000", "limit"),
])
def test_listing_bounds_are_422_not_an_overflow(client, query: str, field: str) -> None:
    resp = client.get(f"{API}?{query}")
    assert_problem(resp, 422)
    assert names_field(resp.json, field)


def test_largest_offset_is_answered(client) -> None:
    assert client.get(f"{API}?offset=2147483647").json["models"] == []


def test_upload_session_size_is_bounded(client) -> None:
    draft = client.post(API, json={"name": "big"}).json
    for size in (2**64, 2.5, "12"):
        resp = client.post(f"{API}/{draft['id']}/uploads", json={"path": "m.gguf", "size": size})
        assert_problem(resp, 422)
        assert names_field(resp.json, "size")


@pytest.mark.parametrize("method, path, kw, field", [
    ("post", "", {"json": {"name": ""}}, "name"),
    ("post", "", {"json": {"name": "x", "version": ""}}, "version"),
    ("post", "/training", {"json": {"name": "", "base_model": "b", "run_id": "r"}}, "name"),
    ("post", "/upload?name=&filename=x.gguf", {}, "name"),
    ("post", "/upload?name=x&filename=", {}, "filename"),
    ("post", "/imports", {"json": {"name": "", "url": "http://127.0.0.1:1/x"}}, "name"),
])
def test_empty_strings_fail_the_schema_naming_the_field(client, method: str, path: str, kw: dict,
                                                         field: str) -> None:
    resp = getattr(client, method)(f"{API}{path}", **kw)
    assert_problem(resp, 422)
    assert names_field(resp.json, field), resp.json


def test_empty_upload_path_fails_the_schema(client) -> None:
    draft = client.post(API, json={"name": "e"}).json
    resp = client.post(f"{API}/{draft['id']}/uploads", json={"path": ""})
    assert_problem(resp, 422)
    assert names_field(resp.json, "path")


@pytest.mark.parametrize("path, allowed", [
    ("/storage", {"GET", "HEAD", "OPTIONS"}),
    ("/training", {"POST", "OPTIONS"}),
    ("/upload", {"POST", "OPTIONS"}),
    ("/imports", {"POST", "OPTIONS"}),
    ("/" + "a" * 32, {"GET", "HEAD", "DELETE", "OPTIONS"}),
])
def test_allow_lists_only_the_routes_own_methods(client, path: str, allowed: set[str]) -> None:
    resp = client.options(f"{API}{path}")
    assert {m.strip() for m in resp.headers["Allow"].split(",")} == allowed
    refused = client.put(f"{API}{path}")
    assert_problem(refused, 405)
    assert {m.strip() for m in refused.headers["Allow"].split(",")} == allowed


def test_ids_of_another_shape_are_404(client) -> None:
    for path in ("/storage/commit", "/nope", "/NOPE" + "A" * 28, "/uploads/nope"):
        assert_problem(client.get(f"{API}{path}"), 404)
    assert_problem(client.delete(f"{API}/storage"), 405)


def test_lower_case_bearer_scheme_is_accepted(tmp_path: Path) -> None:
    app = create_registry_app(tmp_path / "s", RegistrySettings(min_free_bytes=0, token="s3cret"), background=False)
    c = app.test_client()
    for scheme in ("bearer", "BEARER", "Bearer"):
        assert c.get(API, headers={"Authorization": f"{scheme} s3cret"}).status_code == 200
    assert_problem(c.get(API, headers={"Authorization": "bearer wrong"}), 401)


def test_lone_surrogates_in_json_are_400_not_500(client) -> None:
    resp = client.post(API, data='{"name": "x", "description": "\\ud800"}', content_type="application/json")
    assert_problem(resp, 400)
    assert "surrogate" in resp.json["message"]
    draft = client.post(API, json={"name": "x"}).json
    resp = client.post(f"{API}/{draft['id']}/uploads", data='{"path": "a\\udc80b"}', content_type="application/json")
    assert_problem(resp, 400)
    ok = client.post(API, data='{"name": "y", "description": "\\ud83d\\ude00 a pair is text"}',
                     content_type="application/json")
    assert ok.status_code == 201 and ok.json["description"] == "\U0001F600 a pair is text"


def test_a_json_body_over_one_mib_is_413(client) -> None:
    resp = client.post(API, data=b'{"name": "x", "description": "' + b"d" * (1 << 20) + b'"}',
                       content_type="application/json")
    assert_problem(resp, 413)


def test_upload_offset_must_be_ascii_digits(client) -> None:
    draft = client.post(API, json={"name": "o"}).json
    location = client.post(f"{API}/{draft['id']}/uploads", json={"path": "m.bin"}).headers["Location"]
    for value in ("\xb2", "1e3", "-1", "9" * 30):  # "²".isdigit() is True, int("²") is not a number
        assert_problem(client.patch(location, data=b"x", headers={"Upload-Offset": value}), 400, "Upload-Offset")


def test_openapi_describes_ids_paths_and_names(client) -> None:
    doc = client.get("/openapi.json").json
    files = doc["paths"][f"{API}/{{model_id}}/files/{{file_path}}"]
    params = {p["name"]: p["schema"] for p in files["parameters"]}
    assert params["model_id"]["pattern"] == "^[0-9a-f]{32}$" and "pattern" in params["file_path"]
    assert "application/octet-stream" in files["get"]["responses"]["200"]["content"]
    draft = doc["components"]["schemas"]["DraftRequest"]
    assert draft["properties"]["name"]["minLength"] == 1 and "pattern" in draft["properties"]["name"]
    assert "anyOf" in draft  # source=training needs lineage.base_model and lineage.run_id
    assert doc["components"]["schemas"]["UploadSessionRequest"]["properties"]["size"]["maximum"] == 2**62
