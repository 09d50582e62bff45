"""Pushing to the data node's `/v2/` (issue 21, findings 2, 7, 13): a digest's bytes always hash to it.

Before: a PATCH that reached a session between the final PUT's hash and its rename appended to the stored
blob (the PUT answered 201, the digest then served other bytes); `/v2/` ignored `--min-free` and answered
a full disk with 500 `UNKNOWN`, leaving its `.part` behind; manifests with wrong layer sizes were stored;
a PATCH whose `Content-Range` named more bytes than it carried was appended.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from testbed.disks import MountError, small_tmpfs
from testbed.oci_registry import push_blob
from testbed.processes import session, start_registry

pytestmark = pytest.mark.integration
MB = 1 << 20
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def error_code(resp: requests.Response) -> str:
    """The OCI error code of an answer; a success has none."""
    if not resp.headers.get("Content-Type", "").startswith("application/json"):
        return f"(no error body: {resp.text[:80]!r})"
    return resp.json()["errors"][0]["code"]


def open_upload(http: requests.Session, url: str, repo: str) -> str:
    resp = http.post(f"{url}/v2/{repo}/blobs/uploads/", timeout=10)
    assert resp.status_code == 202, resp.text
    return url + resp.headers["Location"]


def part_files(storage: Path) -> list[str]:
    return sorted(p.name for p in (storage / "oci-uploads").iterdir())


@contextmanager
def busy_catalog(db: Path) -> Iterator[None]:
    """Hold registry.db's write lock from another process's view, as a concurrent push or import does."""
    conn = sqlite3.connect(db, timeout=10, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("oci-push")
    svc, url = start_registry(root, "node", "--upstream", "none")
    yield url, root / "node"
    svc.stop()


@pytest.fixture(scope="module")
def http() -> requests.Session:
    return session()


# -- finding 2: a PATCH during the final PUT --------------------------------------------------------


def test_a_patch_while_the_final_put_stores_the_blob_is_an_unknown_upload_and_changes_nothing(node, http) -> None:
    url, storage = node
    data = os.urandom(MB)
    location = open_upload(http, url, "race/held")
    assert http.patch(location, data=data, timeout=10).status_code == 202
    with ThreadPoolExecutor(1) as pool, busy_catalog(storage / "registry.db"):
        put = pool.submit(http.put, f"{location}?digest={sha(data)}", timeout=30)
        time.sleep(0.5)  # the PUT has hashed the session and waits for the catalog to record the blob
        patch = session().patch(location, data=b"x" * 65536, timeout=10)
    assert put.result().status_code == 201, put.result().text
    served = http.get(f"{url}/v2/race/held/blobs/{sha(data)}", timeout=10)
    assert (len(served.content), sha(served.content)) == (MB, sha(data))
    assert (patch.status_code, error_code(patch)) == (404, "BLOB_UPLOAD_UNKNOWN"), patch.text
    late = http.patch(location, data=b"y" * 10, timeout=10)  # after the end, too: nothing appended, no file made
    assert (late.status_code, error_code(late)) == (404, "BLOB_UPLOAD_UNKNOWN")
    assert part_files(storage) == []


def race_once(url: str, repo: str, delay: float) -> tuple[str, str, int]:
    """One push whose final PUT races a PATCH; (repository, digest, PUT status)."""
    http = session()
    data = os.urandom(MB)
    location = open_upload(http, url, repo)
    assert http.patch(location, data=data, timeout=10).status_code == 202
    start = threading.Barrier(2)

    def late_patch() -> None:
        start.wait()
        time.sleep(delay)
        session().patch(location, data=b"z" * 65536, timeout=10)

    racer = threading.Thread(target=late_patch)
    racer.start()
    start.wait()
    status = http.put(f"{location}?digest={sha(data)}", timeout=30).status_code
    racer.join()
    return repo, sha(data), status


def test_patches_racing_final_puts_under_parallel_pushes_never_poison_a_digest(node, http) -> None:
    url, _ = node
    attempts = [(f"race/p{i % 4}", (i % 7) * 0.0005) for i in range(48)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda a: race_once(url, *a), attempts))
    stored = [(repo, digest) for repo, digest, status in results if status == 201]
    assert stored, f"no push was stored: {sorted({s for _, _, s in results})}"
    poisoned = []
    for repo, digest in stored:
        served = http.get(f"{url}/v2/{repo}/blobs/{digest}", timeout=10).content
        if sha(served) != digest:
            poisoned.append((digest, len(served)))
    assert poisoned == [], f"{len(poisoned)} of {len(stored)} stored blobs do not hash to their digest: {poisoned[:3]}"


# -- finding 13: Content-Range against the body, layer sizes against the blobs ----------------------


def test_a_patch_whose_content_range_is_not_its_body_is_416_and_appends_nothing(node, http) -> None:
    url, _ = node
    location = open_upload(http, url, "range/check")
    assert http.patch(location, data=b"a" * 100, headers={"Content-Range": "0-99"}, timeout=10).status_code == 202
    for claimed, body in (("100-299", b"b" * 50), ("100-109", b"c" * 50)):
        resp = http.patch(location, data=body, headers={"Content-Range": claimed}, timeout=10)
        assert (resp.status_code, error_code(resp)) == (416, "BLOB_UPLOAD_INVALID"), (claimed, resp.text)
        assert "Content-Range" in resp.json()["errors"][0]["message"]
        assert resp.headers["Range"] == "0-99"
    chunked = http.patch(location, data=iter([b"d" * 30, b"d" * 30]), headers={"Content-Range": "100-109"},
                         timeout=10)  # no Content-Length: the body is counted as it arrives
    assert (chunked.status_code, error_code(chunked)) == (416, "BLOB_UPLOAD_INVALID"), chunked.text
    assert http.get(location, timeout=10).headers["Range"] == "0-99"
    whole = b"a" * 100 + b"e" * 10
    assert http.patch(location, data=b"e" * 10, headers={"Content-Range": "100-109"}, timeout=10).status_code == 202
    assert http.put(f"{location}?digest={sha(whole)}", timeout=10).status_code == 201


def test_a_manifest_whose_layer_size_is_not_the_blobs_is_refused_naming_the_layer(node, http) -> None:
    url, _ = node
    config, layer = b'{"model_format":"gguf"}', os.urandom(4096)
    config_digest, layer_digest = push_blob(url, "sizes/m", config), push_blob(url, "sizes/m", layer)

    def manifest(layer_size: int) -> bytes:
        return json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_V2,
                           "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                      "digest": config_digest, "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": layer_digest,
                                       "size": layer_size}]}).encode()

    wrong = http.put(f"{url}/v2/sizes/m/manifests/latest", data=manifest(1 << 30),
                     headers={"Content-Type": MANIFEST_V2}, timeout=10)
    assert (wrong.status_code, error_code(wrong)) == (400, "MANIFEST_INVALID"), wrong.text
    error = wrong.json()["errors"][0]
    assert error["detail"] == {"digest": layer_digest, "size": 1 << 30, "stored_size": 4096}
    assert layer_digest in error["message"]
    assert http.get(f"{url}/v2/sizes/m/tags/list", timeout=10).status_code == 404  # nothing was tagged
    right = http.put(f"{url}/v2/sizes/m/manifests/latest", data=manifest(4096), headers={"Content-Type": MANIFEST_V2},
                     timeout=10)
    assert right.status_code == 201, right.text


# -- finding 7: --min-free and a full disk -------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    try:
        with small_tmpfs(tmp_path / "disk", "64m") as disk:
            yield disk
    except MountError as exc:
        pytest.skip(f"the data node's disk: {exc}")


def free_mib(path: Path) -> float:
    return shutil.disk_usage(path).free / MB


def test_v2_uploads_keep_min_free_and_answer_a_full_disk_with_507_leaving_no_part(small_disk, http) -> None:
    floor, full = (start_registry(small_disk, name, "--upstream", "none", "--min-free", free)
                   for name, free in (("floor", "16M"), ("full", "0")))
    (floor_svc, floor_url), (full_svc, full_url) = floor, full
    try:
        before = free_mib(small_disk)
        too_big = os.urandom(before.__floor__() * MB - 8 * MB)  # fits the disk, not above the 16 MiB floor
        location = open_upload(http, floor_url, "disk/a")
        resp = http.put(f"{location}?digest={sha(too_big)}", data=too_big, timeout=60)
        assert (resp.status_code, error_code(resp)) == (507, "STORAGE_FULL"), resp.text
        assert "--min-free" in resp.json()["errors"][0]["message"]
        assert part_files(small_disk / "floor") == [] and free_mib(small_disk) > before - 1

        streamed = http.patch(open_upload(http, floor_url, "disk/a"), data=(too_big[i:i + MB] for i in
                                                                          range(0, len(too_big), MB)), timeout=60)
        assert (streamed.status_code, error_code(streamed)) == (507, "STORAGE_FULL"), streamed.text
        assert part_files(small_disk / "floor") == [] and free_mib(small_disk) > before - 1

        fits = os.urandom(24 * MB)  # leaves far more than 16 MiB
        assert push_blob(floor_url, "disk/a", fits) == sha(fits)

        rest = free_mib(small_disk)
        overflow = os.urandom(int(rest) * MB + 4 * MB)  # more than the disk holds: ENOSPC while writing
        location = open_upload(http, full_url, "disk/b")
        resp = http.patch(location, data=(overflow[i:i + MB] for i in range(0, len(overflow), MB)), timeout=60)
        assert (resp.status_code, error_code(resp)) == (507, "STORAGE_FULL"), resp.text
        assert part_files(small_disk / "full") == [] and free_mib(small_disk) > rest - 1
        assert http.head(location, timeout=10).status_code == 404  # the session ended with its bytes
    finally:
        floor_svc.stop()
        full_svc.stop()
