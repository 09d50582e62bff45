"""Small stand-ins for inference backends' HTTP APIs, on 127.0.0.1:0, that check what they receive.

- FakeOllama implements Ollama's documented model-management API (docs/api.md):
  HEAD/POST /api/blobs/sha256:<hex> (an upload whose bytes do not hash to the digest
  is refused with 400), POST /api/create (every referenced blob must exist, a GGUF
  file must start with the GGUF magic, the template must be a Go template, the
  parameters must be ones Ollama knows), GET /api/tags, POST /api/show,
  DELETE /api/delete, GET /api/version.
- FakeTriton implements Triton's model repository extension and readiness:
  POST /v2/repository/index, POST /v2/repository/models/<name>/load and /unload,
  GET /v2/models/<name>[/versions/<v>]/ready, GET /v2/health/ready and /live. A load
  reads the repository on disk the way Triton does and answers 400 {"error": ...} when
  the layout, config.pbtxt (parsed as protobuf text format) or the vLLM backend's
  model.json is wrong.

- FakeOllama(root, models_dir=...) also answers /api/show and /api/tags for the models in an
  Ollama store on disk (manifests/<host>/<namespace>/<model>/<tag>), as Ollama does for OLLAMA_MODELS.
- FakeOpenAIModels answers GET /v1/models in the OpenAI shape llama.cpp's llama-server and vLLM
  serve: a vLLM (or single-model llama-server) lists the names it was started with;
  `FakeOpenAIModels.llama_router(dir)` lists the GGUFs of a `--models-dir` as llama-server's router
  mode does, read when it starts (`restart()` reads the directory again, as a restarted router does).

All record every request (`requests`) so tests can assert on what was sent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHUNK = 1 << 20


class HTTPError(Exception):
    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status, self.message = status, message


class _FakeServer:
    """A threaded HTTP server whose routes are `route(method, path, handler)` methods."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self.url = ""

    def start(self) -> _FakeServer:
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def _dispatch(self) -> None:
                with app.lock:
                    app.requests.append((self.command, self.path))
                try:
                    status, body = app.route(self.command, self.path.split("?")[0], self)
                except HTTPError as exc:
                    status, body = exc.status, ({"error": exc.message} if exc.message else None)
                self.drain()
                data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if not isinstance(body, bytes)
                                 else "application/x-ndjson")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def body_chunks(self):
                """The request body as it arrives (Content-Length or chunked)."""
                self._consumed = True
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return
                        yield self.rfile.read(size)
                        self.rfile.readline()
                remaining = int(self.headers.get("Content-Length") or 0)
                while remaining > 0:
                    chunk = self.rfile.read(min(_CHUNK, remaining))
                    if not chunk:
                        return
                    remaining -= len(chunk)
                    yield chunk

            def json_body(self, required: bool = True) -> dict:
                raw = b"".join(self.body_chunks())
                if not raw.strip():
                    if required:
                        raise HTTPError(400, "missing request body")
                    return {}
                try:
                    doc = json.loads(raw)
                except ValueError:
                    raise HTTPError(400, "invalid JSON body") from None
                if not isinstance(doc, dict):
                    raise HTTPError(400, "request body must be a JSON object")
                return doc

            def drain(self) -> None:
                if not getattr(self, "_consumed", False):
                    for _ in self.body_chunks():
                        pass

            do_GET = do_POST = do_HEAD = do_DELETE = do_PUT = _dispatch

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def route(self, method: str, path: str, req) -> tuple[int, object]:
        raise NotImplementedError


# ---------------------------------------------------------------- Ollama

OLLAMA_PARAMETERS = {  # Ollama's api.Options / Runner fields, as Modelfile PARAMETER names
    "num_keep": int, "seed": int, "num_predict": int, "top_k": int, "top_p": float, "min_p": float,
    "typical_p": float, "repeat_last_n": int, "temperature": float, "repeat_penalty": float,
    "presence_penalty": float, "frequency_penalty": float, "mirostat": int, "mirostat_tau": float,
    "mirostat_eta": float, "penalize_newline": bool, "stop": list, "numa": bool, "num_ctx": int,
    "num_batch": int, "num_gpu": int, "main_gpu": int, "low_vram": bool, "vocab_only": bool,
    "use_mmap": bool, "use_mlock": bool, "num_thread": int,
}


def _ollama_name(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _check_go_template(template: str) -> None:
    """Go's text/template would refuse these; Jinja in particular is not a Go template."""
    if "{%" in template or "%}" in template:
        raise HTTPError(400, "template error: Jinja block tags are not Go template syntax")
    depth = 0
    for m in re.finditer(r"\{\{|\}\}", template):
        depth += 1 if m.group() == "{{" else -1
        if depth not in (0, 1):
            raise HTTPError(400, "template error: unbalanced {{ }}")
    if depth:
        raise HTTPError(400, "template error: unclosed action")
    opened = len(re.findall(r"\{\{-?\s*(?:if|range|with|block|define)\b", template))
    closed = len(re.findall(r"\{\{-?\s*end\s*-?\}\}", template))
    if opened != closed:
        raise HTTPError(400, f"template error: {opened} if/range/with blocks but {closed} {{{{ end }}}}")


class FakeOllama(_FakeServer):
    """Ollama's model-management API over an on-disk blob directory."""

    def __init__(self, root: str | Path, models_dir: str | Path | None = None) -> None:
        super().__init__()
        self.blobs = Path(root) / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.models_dir = Path(models_dir) if models_dir is not None else None  # an Ollama store it reads
        self.uploads: list[tuple[str, int]] = []  # (digest, bytes) of every accepted upload
        self.creates: list[dict] = []  # every accepted /api/create body
        self.models: dict[str, dict] = {}

    def blob_path(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise HTTPError(400, f"invalid digest {digest!r}")
        return self.blobs / digest.replace(":", "-")

    def route(self, method: str, path: str, req) -> tuple[int, object]:
        if path.startswith("/api/blobs/"):
            blob = self.blob_path(path[len("/api/blobs/"):])
            if method == "HEAD":
                return (200 if blob.is_file() else 404), None
            if method == "POST":
                return self._upload(blob, req)
        routes = {("POST", "/api/create"): self._create, ("GET", "/api/tags"): self._tags,
                  ("POST", "/api/show"): self._show, ("DELETE", "/api/delete"): self._delete,
                  ("GET", "/api/version"): lambda req: (200, {"version": "0.12.0"})}
        if (method, path) not in routes:
            raise HTTPError(404, f"{method} {path} not found")
        return routes[(method, path)](req)

    def _upload(self, blob: Path, req) -> tuple[int, object]:
        expected = blob.name.replace("sha256-", "")
        h, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".upload-")
        with open(fd, "wb") as f:
            for chunk in req.body_chunks():
                h.update(chunk)
                f.write(chunk)
                size += len(chunk)
        if h.hexdigest() != expected:
            Path(tmp).unlink()
            raise HTTPError(400, f"digest mismatch, expected sha256:{expected}, got sha256:{h.hexdigest()}")
        Path(tmp).replace(blob)
        with self.lock:
            self.uploads.append((f"sha256:{expected}", size))
        return 201, None

    def _create(self, req) -> tuple[int, object]:
        body = req.json_body()
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            raise HTTPError(400, "model is required")
        files = body.get("files")
        if not files and not body.get("from"):
            raise HTTPError(400, "neither 'from' or 'files' was specified")
        if not isinstance(files, dict):
            raise HTTPError(400, "files must map file names to digests")
        size = 0
        for filename, digest in files.items():
            if not isinstance(filename, str) or filename.startswith("/") or ".." in filename.split("/"):
                raise HTTPError(400, f"invalid file name {filename!r}")
            blob = self.blob_path(digest) if isinstance(digest, str) else None
            if blob is None or not blob.is_file():
                raise HTTPError(400, f"blob {digest} for {filename} not found; POST /api/blobs/{digest} first")
            if filename.endswith(".gguf") and blob.read_bytes()[:4] != b"GGUF":
                raise HTTPError(400, f"{filename}: invalid file magic")
            size += blob.stat().st_size
        if not any(f.endswith((".gguf", ".safetensors")) for f in files):
            raise HTTPError(400, "no GGUF or safetensors file in files")
        template = body.get("template")
        if template is not None:
            if not isinstance(template, str):
                raise HTTPError(400, "template must be a string")
            _check_go_template(template)
        params = body.get("parameters") or {}
        for key, value in params.items():
            kind = OLLAMA_PARAMETERS.get(key)
            if kind is None:
                raise HTTPError(400, f"unknown parameter {key!r}")
            if kind is list and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise HTTPError(400, f"parameter {key!r} must be a list of strings")
        record = {"files": files, "template": template, "system": body.get("system"), "parameters": params}
        digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
        family = self._architecture(files)
        with self.lock:
            self.creates.append(body)
            self.models[_ollama_name(name)] = {
                **record, "name": _ollama_name(name), "digest": digest, "size": size,
                "modified_at": dt.datetime.now(dt.UTC).isoformat(),
                "details": {"parent_model": "", "format": "gguf", "family": family,
                            "families": [family] if family else None, "parameter_size": "",
                            "quantization_level": ""}}
        statuses = ["parsing GGUF"] + [f"using existing layer {d}" for d in files.values()] + \
            ["writing manifest", "success"]
        if body.get("stream") is False:
            return 200, {"status": "success"}
        return 200, b"".join(json.dumps({"status": s}).encode() + b"\n" for s in statuses)

    def _architecture(self, files: dict) -> str:
        from eldric.core.formats import gguf_info  # a real GGUF reader: the fake reports what Ollama would
        for filename, digest in files.items():
            if filename.endswith(".gguf"):
                try:
                    return gguf_info(filename, self.blob_path(digest)).get("architecture") or ""
                except Exception as exc:
                    raise HTTPError(400, f"{filename}: {exc}") from None
        return ""

    def _entry(self, name: str) -> dict:
        model = self.models.get(_ollama_name(name)) or self._stored(name)
        if model is None:
            raise HTTPError(404, f"model '{name}' not found")
        return model

    def _stored(self, name: str) -> dict | None:
        """A model of the on-disk store: its manifest names blobs that are all present."""
        if self.models_dir is None:
            return None
        full = _ollama_name(name)
        path_part, tag = full.rsplit(":", 1)
        parts = path_part.split("/")
        host, namespace = ("registry.ollama.ai", "library") if len(parts) == 1 else \
            (("registry.ollama.ai", parts[0]) if len(parts) == 2 else (parts[0], parts[1]))
        manifest = self.models_dir / "manifests" / host / namespace / parts[-1] / tag
        try:
            doc = json.loads(manifest.read_bytes())
        except (OSError, ValueError):
            return None
        layers = doc.get("layers") or []
        blobs = self.models_dir / "blobs"
        if not all((blobs / layer["digest"].replace(":", "-")).is_file() for layer in layers):
            return None
        files = {layer["mediaType"].rsplit(".", 1)[-1]: layer["digest"] for layer in layers}
        short = full.removeprefix("registry.ollama.ai/").removeprefix("library/")
        return {"name": short, "files": files, "blob_dir": blobs, "template": None, "system": None, "parameters": {},
                "digest": hashlib.sha256(manifest.read_bytes()).hexdigest(),
                "size": sum(int(layer.get("size") or 0) for layer in layers),
                "modified_at": dt.datetime.fromtimestamp(manifest.stat().st_mtime, dt.UTC).isoformat(),
                "details": {"parent_model": "", "format": "gguf", "family": "", "families": None,
                            "parameter_size": "", "quantization_level": ""}}

    def _tags(self, req) -> tuple[int, object]:
        with self.lock:
            models = [{"name": m["name"], "model": m["name"], "modified_at": m["modified_at"], "size": m["size"],
                       "digest": m["digest"], "details": m["details"]} for m in self.models.values()]
        return 200, {"models": models}

    def _show(self, req) -> tuple[int, object]:
        body = req.json_body()
        m = self._entry(body.get("model") or body.get("name") or "")
        params = "\n".join(f"{k:<30} {json.dumps(v)}" for k, vs in m["parameters"].items()
                           for v in (vs if isinstance(vs, list) else [vs]))
        blobs = m.get("blob_dir") or self.blobs
        modelfile = "".join(f"FROM {blobs / d.replace(':', '-')}\n" for d in m["files"].values())
        return 200, {"modelfile": modelfile, "parameters": params, "template": m["template"] or "{{ .Prompt }}",
                     "system": m["system"], "details": m["details"], "modified_at": m["modified_at"],
                     "model_info": {"general.architecture": m["details"]["family"]}}

    def _delete(self, req) -> tuple[int, object]:
        body = req.json_body()
        name = _ollama_name(body.get("model") or body.get("name") or "")
        with self.lock:
            if self.models.pop(name, None) is None:
                raise HTTPError(404, f"model '{name}' not found")
        return 200, None


# ---------------------------------------------------------------- llama.cpp / vLLM (OpenAI /v1/models)

class FakeOpenAIModels(_FakeServer):
    """GET /v1/models as llama-server and vLLM answer it: {"object": "list", "data": [{"id", "object",
    "created", "owned_by"}]}. `served`: the model names the server was started with."""

    def __init__(self, served: list[str] | None = None, *, owned_by: str = "vllm",
                 models_dir: str | Path | None = None) -> None:
        super().__init__()
        self.owned_by, self.models_dir = owned_by, Path(models_dir) if models_dir is not None else None
        self.served = list(served or [])
        if self.models_dir is not None:
            self.restart()

    @classmethod
    def llama_router(cls, models_dir: str | Path) -> FakeOpenAIModels:
        """llama-server in router mode (`--models-dir DIR`): each GGUF in DIR by its name without .gguf,
        each subdirectory (split or multimodal models) by its name; read at start only."""
        return cls(owned_by="llamacpp", models_dir=models_dir)

    def restart(self) -> None:
        """What a restarted router sees: the directory as it is now."""
        root = self.models_dir
        found = sorted(p.name.removesuffix(".gguf") for p in root.iterdir()
                       if not p.name.startswith(".") and (p.is_dir() or p.name.endswith(".gguf"))) \
            if root is not None and root.is_dir() else []
        with self.lock:
            self.served = found

    def route(self, method: str, path: str, req) -> tuple[int, object]:
        if (method, path) != ("GET", "/v1/models"):
            raise HTTPError(404, f"{method} {path} not found")
        with self.lock:
            data = [{"id": name, "object": "model", "created": 1700000000, "owned_by": self.owned_by}
                    for name in self.served]
        return 200, {"object": "list", "data": data}


# ---------------------------------------------------------------- Triton

MODEL_CONFIG_FIELDS = {  # top-level fields of Triton's ModelConfig (model_config.proto)
    "name", "platform", "backend", "runtime", "version_policy", "max_batch_size", "input", "output",
    "batch_input", "batch_output", "optimization", "dynamic_batching", "sequence_batching",
    "ensemble_scheduling", "instance_group", "default_model_filename", "cc_model_filenames", "metric_tags",
    "parameters", "model_warmup", "model_operations", "model_transaction_policy",
    "model_repository_agents", "response_cache",
}
INSTANCE_KINDS = {"KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"}
TRITON_BACKENDS = {"vllm", "python", "tensorrtllm", "onnxruntime", "pytorch", "tensorflow", "openvino", "fil"}
_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|[A-Za-z_][A-Za-z0-9_.]*|-?\d+(?:\.\d+)?|[{}\[\]:,;]')


def parse_pbtxt(text: str) -> dict:
    """Protobuf text format into {field: [values]}; ValueError with the position on bad syntax."""
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"config.pbtxt: unexpected character {text[pos]!r} at offset {pos}")
        if not m.group().isspace() and not m.group().startswith("#"):
            tokens.append((m.group(), pos))
        pos = m.end()
    tokens.append(("<end>", len(text)))
    i = 0

    def expect_value():
        nonlocal i
        tok = tokens[i][0]
        if tok == "{":
            i += 1
            return message("}")
        if tok == "[":
            i += 1
            values = []
            while tokens[i][0] != "]":
                values.append(expect_value())
                if tokens[i][0] == ",":
                    i += 1
                elif tokens[i][0] != "]":
                    raise ValueError(f"config.pbtxt: expected ',' or ']' at offset {tokens[i][1]}")
            i += 1
            return values
        if tok in ("<end>", "}", "]", ":", ",", ";"):
            raise ValueError(f"config.pbtxt: expected a value at offset {tokens[i][1]}, found {tok!r}")
        i += 1
        return json.loads(tok) if tok.startswith('"') or tok[0] in "-0123456789" else tok

    def message(close: str) -> dict:
        nonlocal i
        out: dict[str, list] = {}
        while tokens[i][0] != close:
            key, at = tokens[i]
            if not re.match(r"^[A-Za-z_]", key):
                raise ValueError(f"config.pbtxt: expected a field name at offset {at}, found {key!r}")
            i += 1
            if tokens[i][0] == ":":
                i += 1
            elif tokens[i][0] not in ("{", "["):
                raise ValueError(f"config.pbtxt: expected ':' after {key!r} at offset {tokens[i][1]}")
            value = expect_value()
            out.setdefault(key, []).extend(value if isinstance(value, list) else [value])
            if tokens[i][0] in (",", ";"):
                i += 1
        if close == "}":
            i += 1
        return out

    return message("<end>")


class FakeTriton(_FakeServer):
    """Triton's repository API over a model repository directory (EXPLICIT model control)."""

    def __init__(self, repository: str | Path) -> None:
        super().__init__()
        self.repository = Path(repository)
        self.states: dict[str, dict] = {}  # name -> {"state", "version", "reason"}
        self.loads: list[str] = []

    def route(self, method: str, path: str, req) -> tuple[int, object]:
        if (method, path) in (("GET", "/v2/health/ready"), ("GET", "/v2/health/live")):
            return 200, None
        if (method, path) == ("POST", "/v2/repository/index"):
            return self._index(req.json_body(required=False))
        m = re.match(r"^/v2/repository/models/([^/]+)/(load|unload)$", path)
        if m and method == "POST":
            req.json_body(required=False)
            return self._load(m.group(1)) if m.group(2) == "load" else self._unload(m.group(1))
        m = re.match(r"^/v2/models/([^/]+)(?:/versions/(\d+))?/ready$", path)
        if m and method == "GET":
            s = self.states.get(m.group(1), {})
            ready = s.get("state") == "READY" and m.group(2) in (None, s.get("version"))
            return (200, None) if ready else (400, {"error": f"model {m.group(1)} is not ready"})
        raise HTTPError(404, f"{method} {path} not found")

    def _index(self, body: dict) -> tuple[int, object]:
        out = []
        for d in sorted(p for p in self.repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
            s = self.states.get(d.name, {})
            entry = {"name": d.name, "state": s.get("state", ""), "reason": s.get("reason", "")}
            if s.get("version"):
                entry["version"] = s["version"]
            if not body.get("ready") or entry["state"] == "READY":
                out.append(entry)
        return 200, out

    def _load(self, name: str) -> tuple[int, object]:
        try:
            version = self.check_model(name)
        except ValueError as exc:
            with self.lock:
                self.states[name] = {"state": "UNAVAILABLE", "reason": str(exc)}
            raise HTTPError(400, f"failed to load '{name}': {exc}") from None
        with self.lock:
            self.states[name] = {"state": "READY", "version": version, "reason": ""}
            self.loads.append(name)
        return 200, None

    def _unload(self, name: str) -> tuple[int, object]:
        if name not in self.states and not (self.repository / name).is_dir():
            raise HTTPError(400, f"failed to unload '{name}': model not found")
        with self.lock:
            self.states[name] = {"state": "UNAVAILABLE", "reason": "unloaded"}
        return 200, None

    def check_model(self, name: str) -> str:
        """The version Triton would serve; ValueError saying what is wrong otherwise."""
        model_dir = self.repository / name
        if not model_dir.is_dir():
            raise ValueError("failed to poll from model repository (no such model directory)")
        config_path = model_dir / "config.pbtxt"
        if not config_path.is_file():
            raise ValueError("config.pbtxt not found (the vLLM backend does not auto-generate one)")
        config = parse_pbtxt(config_path.read_text())
        unknown = set(config) - MODEL_CONFIG_FIELDS
        if unknown:
            raise ValueError(f"config.pbtxt: unknown field(s) {sorted(unknown)}")
        if config.get("name", [name])[0] != name:
            raise ValueError(f"config.pbtxt names the model {config['name'][0]!r}, expecting {name!r}")
        if not config.get("backend") and not config.get("platform"):
            raise ValueError("config.pbtxt sets neither backend nor platform")
        backend = config.get("backend", [""])[0]
        if backend and backend not in TRITON_BACKENDS:
            raise ValueError(f"unable to find backend library for backend '{backend}'")
        for group in config.get("instance_group", []):
            kind = (group.get("kind") or ["KIND_AUTO"])[0]
            if kind not in INSTANCE_KINDS:
                raise ValueError(f"instance_group kind {kind!r} is not one of {sorted(INSTANCE_KINDS)}")
        versions = sorted(int(p.name) for p in model_dir.iterdir()
                          if p.is_dir() and p.name.isdigit() and not p.name.startswith("0"))
        specific = [v for policy in config.get("version_policy", []) for s in policy.get("specific", [])
                    for v in s.get("versions", [])]
        wanted = specific or versions[-1:]
        if not wanted or any(v not in versions for v in wanted):
            raise ValueError(f"no version directory for version(s) {wanted or '(any)'}; found {versions}")
        version_dir = model_dir / str(wanted[-1])
        if config.get("backend", [""])[0] == "vllm":
            self._check_vllm(version_dir)
        return str(wanted[-1])

    @staticmethod
    def _check_vllm(version_dir: Path) -> None:
        try:
            args = json.loads((version_dir / "model.json").read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"vllm backend: cannot read {version_dir.name}/model.json: {exc}") from None
        target = Path(args.get("model", "")) if isinstance(args, dict) else Path("")
        if not str(target) or not target.exists():
            raise ValueError(f"vllm backend: model.json's model {str(target)!r} does not exist")
        if target.is_file():
            if target.read_bytes()[:4] != b"GGUF":
                raise ValueError(f"vllm backend: {target} is not a GGUF file")
        elif not (target / "config.json").is_file() or not any(target.glob("*.safetensors")):
            raise ValueError(f"vllm backend: {target} lacks config.json or *.safetensors weights")
