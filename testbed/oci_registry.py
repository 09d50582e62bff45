"""A real OCI/Docker registry on loopback, standing in for registry.ollama.ai.

Debian's ``docker-registry`` (CNCF distribution 2.8) serves Ollama's manifest and
layer layout unchanged, supports ranged blob GETs and can delete manifests, so
pull/resume/verify code is exercised against genuine HTTP behaviour.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

REGISTRY_BIN = "/usr/bin/docker-registry"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
MT_MODEL = "application/vnd.ollama.image.model"
MT_TEMPLATE = "application/vnd.ollama.image.template"
MT_SYSTEM = "application/vnd.ollama.image.system"
MT_PARAMS = "application/vnd.ollama.image.params"
MT_LICENSE = "application/vnd.ollama.image.license"
_CHUNK = 1 << 20

_CONFIG_YML = """\
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def _session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # loopback only: never route through an HTTP(S)_PROXY from the env
    return s


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OCIRegistry:
    """Run ``docker-registry`` on 127.0.0.1:<free port> with throw-away storage.

    Pass *workdir* (e.g. pytest's ``tmp_path``) to keep config, log and storage
    for post-mortems; without it a temp dir is created and removed on stop().
    """

    def __init__(self, workdir: str | os.PathLike[str] | None = None, *,
                 startup_timeout: float = 10.0) -> None:
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="oci-registry-"))
        self.root = self.workdir / "storage"  # storage.filesystem.rootdirectory
        self.config_path = self.workdir / "config.yml"
        self.log_path = self.workdir / "registry.log"
        self.startup_timeout = startup_timeout
        self.port = 0
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OCIRegistry:
        self.root.mkdir(parents=True, exist_ok=True)
        # Every exported REGISTRY_* variable is parsed as a config override and an
        # unknown one makes the registry exit, so strip them all; config lives in the file.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        last_error = ""
        for _attempt in range(3):  # the free port may be grabbed between probe and bind
            self.port = _free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.config_path.write_text(_CONFIG_YML.format(root=self.root, port=self.port))
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [REGISTRY_BIN, "serve", str(self.config_path)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                )
            if self._wait_ready():
                return self
            last_error = self.log_tail()
            self._kill()
            if "address already in use" not in last_error:
                break
        raise RuntimeError(f"docker-registry did not become ready on {self.url}:\n{last_error}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        with _session() as s:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    return False
                try:
                    if s.get(f"{self.url}/v2/", timeout=1).status_code == 200:
                        return True
                except requests.ConnectionError:
                    pass
                time.sleep(0.02)
        return False

    def log_tail(self, n: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-n:])

    def _kill(self) -> None:
        p, self.process = self.process, None
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)

    def stop(self) -> None:
        self._kill()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> OCIRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _digest_of(data: bytes | Path) -> tuple[str, int]:
    if isinstance(data, bytes):
        return "sha256:" + hashlib.sha256(data).hexdigest(), len(data)
    h, size = hashlib.sha256(), 0
    with open(data, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def push_blob(base_url: str, repo: str, data: bytes | str | os.PathLike[str]) -> str:
    """Upload a blob monolithically (POST + PUT ?digest=); returns "sha256:<hex>".

    A Path is hashed and then streamed from disk, never read whole into memory.
    """
    if not isinstance(data, bytes):
        data = Path(data)
    digest, size = _digest_of(data)
    with _session() as s:
        if s.head(f"{base_url}/v2/{repo}/blobs/{digest}", timeout=10).status_code == 200:
            return digest  # already there (same content => same digest)
        r = s.post(f"{base_url}/v2/{repo}/blobs/uploads/", timeout=10)
        r.raise_for_status()
        loc = urljoin(base_url + "/", r.headers["Location"])
        loc += ("&" if "?" in loc else "?") + f"digest={digest}"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        if isinstance(data, bytes):
            r = s.put(loc, data=data, headers=headers, timeout=60)
        else:
            with open(data, "rb") as f:
                r = s.put(loc, data=f, headers=headers, timeout=600)
        if r.status_code != 201:
            raise RuntimeError(f"blob upload failed: {r.status_code} {r.text}")
    return digest


def _human_number(n: int) -> str:
    """Parameter count the way Ollama labels model_type ("8.0B", "135M", "250K")."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}" if unit == "B" else f"{n / div:.0f}{unit}"
    return str(n)


def _gguf_facts(path: Path) -> tuple[str, str, str]:
    """(model_family, model_type, file_type) read from a GGUF, for the config blob."""
    import gguf  # local: only needed when a model layer is pushed

    r = gguf.GGUFReader(path)  # memory-maps; cheap even for big files
    arch = str(r.fields["general.architecture"].contents())
    params = sum(int(t.n_elements) for t in r.tensors)
    ft_field = r.fields.get("general.file_type")
    file_type = "unknown"
    if ft_field is not None:
        ft = gguf.LlamaFileType(int(ft_field.contents()))
        file_type = ft.name.removeprefix("MOSTLY_").removeprefix("ALL_")
    return arch, _human_number(params), file_type


def push_ollama_model(
    base_url: str,
    repo: str = "library/tiny",
    tag: str = "latest",
    *,
    gguf_path: str | os.PathLike[str] | None,
    template: str | None = "{{ .Prompt }}",
    system: str | None = "You are a test.",
    params: dict[str, Any] | None = {"stop": ["<|im_end|>"]},  # noqa: B006 (never mutated)
    license: str | None = "MIT test license",
) -> dict[str, Any]:
    """Push a model in Ollama's registry layout; any layer may be None (omitted).

    Returns {"manifest", "manifest_bytes", "manifest_digest", "layers"
    {media_type: digest}, "config", "config_digest"}.
    """
    candidates: list[tuple[str, bytes | Path | None]] = [
        (MT_MODEL, Path(gguf_path) if gguf_path is not None else None),
        (MT_TEMPLATE, template.encode() if template is not None else None),
        (MT_SYSTEM, system.encode() if system is not None else None),
        (MT_PARAMS, json.dumps(params).encode() if params is not None else None),
        (MT_LICENSE, license.encode() if license is not None else None),
    ]

    layers: dict[str, str] = {}
    descriptors: list[dict[str, Any]] = []
    for media_type, data in candidates:
        if data is None:
            continue
        digest = push_blob(base_url, repo, data)
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        layers[media_type] = digest
        descriptors.append({"mediaType": media_type, "digest": digest, "size": size})

    family, model_type, file_type = _gguf_facts(Path(gguf_path)) if gguf_path else ("", "", "")
    config = {
        "model_format": "gguf",
        "model_family": family,
        "model_families": [family] if family else None,
        "model_type": model_type,
        "file_type": file_type,
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descriptors]},
    }
    config_bytes = json.dumps(config).encode()
    config_digest = push_blob(base_url, repo, config_bytes)

    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_V2,
        "config": {"mediaType": CONFIG_V1, "digest": config_digest, "size": len(config_bytes)},
        "layers": descriptors,
    }
    manifest_bytes = json.dumps(manifest).encode()
    with _session() as s:
        r = s.put(f"{base_url}/v2/{repo}/manifests/{tag}", data=manifest_bytes,
                  headers={"Content-Type": MANIFEST_V2}, timeout=30)
    if r.status_code != 201:
        raise RuntimeError(f"manifest push failed: {r.status_code} {r.text}")
    return {
        "manifest": manifest,
        "manifest_bytes": manifest_bytes,
        # The registry stores and serves the exact bytes we PUT, so this is its digest.
        "manifest_digest": "sha256:" + hashlib.sha256(manifest_bytes).hexdigest(),
        "layers": layers,
        "config": config,
        "config_digest": config_digest,
    }


def get_manifest(base_url: str, repo: str, reference: str) -> requests.Response:
    """GET a manifest the way Ollama does (the v2 Accept header is mandatory here)."""
    with _session() as s:
        return s.get(f"{base_url}/v2/{repo}/manifests/{reference}",
                     headers={"Accept": MANIFEST_V2}, timeout=30)


def blob_data_path(registry_root: str | os.PathLike[str], digest: str) -> Path:
    algo, hexd = digest.split(":", 1)  # filesystem storage layout of distribution v2
    return Path(registry_root) / "docker/registry/v2/blobs" / algo / hexd[:2] / hexd / "data"


def corrupt_blob(registry_root: str | os.PathLike[str], digest: str, new_bytes: bytes | None = None) -> Path:
    """Make the registry serve bytes that do not match *digest*.

    Default: flip one byte in the middle, in place, so size (and Content-Length)
    stay right and only a digest check can notice.  With *new_bytes* the stored
    data is replaced by them verbatim (the registry then reports their length).
    """
    path = blob_data_path(registry_root, digest)
    if new_bytes is not None:
        path.write_bytes(new_bytes)
        return path
    size = path.stat().st_size
    if size == 0:
        raise ValueError("cannot corrupt an empty blob while keeping its length")
    with open(path, "r+b") as f:
        f.seek(size // 2)
        b = f.read(1)[0]
        f.seek(size // 2)
        f.write(bytes([b ^ 0xFF]))
    return path


def delete_manifest(base_url: str, repo: str, tag: str) -> str:
    """Delete the manifest *tag* points to, by digest (delete-by-tag is refused); returns it."""
    with _session() as s:
        r = s.head(f"{base_url}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_V2}, timeout=10)
        r.raise_for_status()
        digest = r.headers["Docker-Content-Digest"]
        r = s.delete(f"{base_url}/v2/{repo}/manifests/{digest}", timeout=10)
        if r.status_code != 202:
            raise RuntimeError(f"manifest delete failed: {r.status_code} {r.text}")
    return digest
