"""Issue 21, finding 13 (last part): `eldric import` reads a bundle's tar with memory that does not grow per member.

Before: the reader kept every member's header (tarfile's `getmembers()`), so a 200,000-member bundle took
164 MiB of importer memory. A bundle of one small model plus N empty members nobody references (a
hostile or merely odd bundle) is imported as a process; its peak RSS (wait4) is compared with the same
import of the bundle without them.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from eldric.core.digests import Digest
from eldric.core.manifests import OCI_MANIFEST
from eldric.core.oci_layout import BLOBS_DIR, IMAGE_NAME, REF_NAME, Descriptor, LayoutWriter
from testbed.oci_registry import MANIFEST_V2, get_manifest
from testbed.processes import REPO_ROOT

pytestmark = pytest.mark.integration

MEMBERS = 30_000  # about 15 MiB of headers kept before; ~3 s to write
MB = 1 << 20


def write_bundle(path: Path, extra_members: int) -> bytes:
    """One Ollama model (`library/many:latest`) and `extra_members` empty, unreferenced blob files; its manifest."""
    layer = b"GGUF" + bytes(4096)
    config = json.dumps({"model_format": "gguf", "architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [str(Digest.of_bytes(layer))]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(Digest.of_bytes(config)),
        "size": len(config)}, "layers": [{"mediaType": "application/vnd.ollama.image.model",
                                          "digest": str(Digest.of_bytes(layer)), "size": len(layer)}]}).encode()
    with open(path, "wb") as f:
        writer = LayoutWriter(f)
        writer.write_header([Descriptor(OCI_MANIFEST, Digest.of_bytes(manifest), len(manifest), {
            REF_NAME: "library/many:latest", IMAGE_NAME: "registry.ollama.ai/library/many:latest"})])
        for blob in (manifest, config, layer):
            writer.add_blob(Digest.of_bytes(blob), len(blob), io.BytesIO(blob), "blob")
        for i in range(extra_members):
            info = tarfile.TarInfo(BLOBS_DIR + hashlib.sha256(b"%d" % i).hexdigest())
            writer.tar.addfile(info)
        writer.close()
    return manifest


# The child reports its own high-water mark (VmHWM, of its memory after exec): a child's ru_maxrss from
# wait4 would include the size of this pytest process at fork time.
_MEASURED = """
import atexit, os, pathlib, runpy, sys
from testbed.processes import peak_rss_mib
path = pathlib.Path(sys.argv[1])
atexit.register(lambda: path.write_text(str(peak_rss_mib(os.getpid()))))
sys.argv = ["eldric", *sys.argv[2:]]
runpy.run_module("eldric.cli", run_name="__main__")
"""


def import_peak_rss(bundle: Path, registry: str, home: Path) -> int:
    """Peak RSS in bytes of `eldric import BUNDLE` as its own process (it must succeed)."""
    report = home / f"{bundle.stem}.hwm"
    done = subprocess.run([sys.executable, "-c", _MEASURED, str(report), "import", str(bundle), "--registry", registry],
                          env={"PATH": "/usr/bin:/bin", "HOME": str(home)}, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(float(report.read_text()) * MB)


def test_the_importers_memory_does_not_grow_with_the_tars_members(oci, tmp_path):
    small, many = tmp_path / "small.tar", tmp_path / "many.tar"
    manifest = write_bundle(small, 0)
    write_bundle(many, MEMBERS)
    baseline = import_peak_rss(small, oci.url, tmp_path)
    peak = import_peak_rss(many, oci.url, tmp_path)
    served = get_manifest(oci.url, "library/many", "latest")
    assert served.status_code == 200 and json.loads(served.content)["mediaType"] == MANIFEST_V2
    assert json.loads(served.content)["layers"] == json.loads(manifest)["layers"]
    grown = peak - baseline
    assert grown < 4 * MB, f"{MEMBERS} members grew the importer by {grown / MB:.1f} MiB ({baseline / MB:.1f} -> {peak / MB:.1f})"
