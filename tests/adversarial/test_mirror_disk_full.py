"""Issue 21, finding 11: the mirror must not start a download that cannot fit.

Before: a 48 MiB layer with 32 MiB free was answered 200 and cut after 28 MiB (the disk full), and every
retry of the client downloaded it again. Now the size upstream gives is checked against the free space
less `--min-free` before a byte is fetched: 507 `STORAGE_FULL` in the OCI format, nothing fetched.
The data node's storage is a 64 MiB tmpfs (tests/integration/test_disk_full.py's fixture).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from testbed.gguf_models import write_gguf_of_size
from testbed.oci_registry import MANIFEST_V2, push_ollama_model
from testbed.processes import LOOPBACK, session, start_registry
from tests.integration.test_disk_full import small_disk  # noqa: F401  (a 64 MiB tmpfs, skipped without root)
from tests.support.throttle import ThrottlingProxy

pytestmark = pytest.mark.integration

MB = 1 << 20


@pytest.fixture(scope="module")
def model(oci, workdir) -> dict:
    gguf = write_gguf_of_size(workdir / "big48.gguf", 48 * MB, name="big48")
    pushed = push_ollama_model(oci.url, "library/big48", "latest", gguf_path=gguf)
    layer = pushed["layers"]["application/vnd.ollama.image.model"]
    return {**pushed, "layer": layer, "size": gguf.stat().st_size}


@pytest.fixture
def node(oci, small_disk):  # noqa: F811
    disk = small_disk
    proxy = ThrottlingProxy(oci.url, 256 * MB)  # counts what upstream sends
    svc, url = start_registry(disk, "reg", "--min-free", "4M",
                              env={"ELDRIC_MIRROR_UPSTREAM": proxy.url, "ELDRIC_URL_ALLOWLIST": LOOPBACK})
    yield {"url": url, "disk": disk, "proxy": proxy, "service": svc}
    svc.stop()
    proxy.close()


def leftovers(disk: Path) -> list[str]:
    return [p.name for p in disk.rglob("*") if p.is_file() and ".mirror" in p.name]


def test_a_mirrored_blob_that_cannot_fit_is_refused_before_a_byte_is_fetched(node, model):
    http, url, disk, proxy = session(), node["url"], node["disk"], node["proxy"]
    got = http.get(f"{url}/v2/library/big48/manifests/latest", headers={"Accept": MANIFEST_V2}, timeout=30)
    assert got.status_code == 200
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - 32 * MB))  # 32 MiB free, 28 usable past --min-free
    free = shutil.disk_usage(disk).free
    blob = f"{url}/v2/library/big48/blobs/{model['layer']}"
    for _attempt in range(2):  # a client's retry is refused the same way, and fetches nothing either
        proxy.reset_counters()
        resp = http.get(blob, stream=True, timeout=60)
        assert resp.status_code == 507, (resp.status_code, resp.headers)
        error = resp.json()["errors"][0]
        assert error["code"] == "STORAGE_FULL" and "min-free" in error["message"], error
        assert proxy.bytes_served < MB, f"{proxy.bytes_served} bytes of the layer crossed the uplink"
        assert not leftovers(disk) and shutil.disk_usage(disk).free >= free - MB
    head = http.head(blob, timeout=60)
    assert head.status_code == 507
    filler.unlink()  # room again: the same request fetches and serves the blob
    served = http.get(blob, timeout=60)
    assert served.status_code == 200 and "sha256:" + hashlib.sha256(served.content).hexdigest() == model["layer"]
