"""AgentSettings.from_env(): the agent's only reader of the environment."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from eldric.cluster.queues import WORKER_PORTS, is_valid_worker_id
from eldric.transfer.retry import backoff_delay
from worker_agent.errors import SettingsError

DEFAULT_OLLAMA_REGISTRY = "https://registry.ollama.ai"


@dataclass(frozen=True)
class AgentSettings:
    worker_id: str = field(metadata={"env": "ELDRIC_WORKER_NAME", "help": "this node's worker id"})
    worker_type: str = field(metadata={"env": "ELDRIC_WORKER_TYPE", "help": "inference, cloud, data, science, training, media or comm"})
    data_dir: Path = field(metadata={"env": "ELDRIC_DATA_DIR", "help": "agent state; default ~/.eldric/<worker id>"})
    redis_url: str = field(default="redis://127.0.0.1:6379/0", metadata={"env": "ELDRIC_REDIS_URL", "help": "Redis: broker and cluster state"})
    host: str = field(default="127.0.0.1", metadata={"env": "ELDRIC_AGENT_HOST", "help": "address the agent's HTTP server binds"})
    port: int | None = field(default=None, metadata={"env": "ELDRIC_AGENT_PORT", "help": "agent HTTP port; default the type's port; 0 picks a free one"})
    advertise_url: str = field(default="", metadata={"env": "ELDRIC_AGENT_ADVERTISE_URL", "help": "URL peers use to reach this agent; default http://host:port"})
    ollama_models_dir: Path | None = field(default=None, metadata={"env": "ELDRIC_OLLAMA_MODELS", "help": "Ollama's model store (OLLAMA_MODELS); default <data dir>/ollama/models"})
    ollama_registry: str = field(default=DEFAULT_OLLAMA_REGISTRY, metadata={"env": "ELDRIC_OLLAMA_REGISTRY", "help": "base URL serving registry.ollama.ai names (a mirror's http:// URL works)"})
    insecure_registries: tuple[str, ...] = field(default=(), metadata={"env": "ELDRIC_INSECURE_REGISTRIES", "help": "comma list of hosts in model names reached over http"})
    cluster_secret: str = field(default="", metadata={"env": "ELDRIC_CLUSTER_SECRET", "help": "shared secret for agent-to-agent and agent-to-controller calls"})
    backends: tuple[str, ...] = field(default=("ollama",), metadata={"env": "ELDRIC_BACKENDS", "help": "comma list of backends this node serves"})
    heartbeat_seconds: float = field(default=5.0, metadata={"env": "ELDRIC_HEARTBEAT_SECONDS", "help": "heartbeat period; offline after 3 missed"})
    concurrency: int = field(default=4, metadata={"env": "ELDRIC_AGENT_CONCURRENCY", "help": "tasks run at once (threads)"})
    download_parts: int = field(default=8, metadata={"env": "ELDRIC_DOWNLOAD_PARTS", "help": "most parallel HTTP range connections per blob (opened one by one while the link is slow)"})
    part_bytes: int = field(default=64 << 20, metadata={"env": "ELDRIC_PART_BYTES", "help": "size of each HTTP range request"})
    stall_seconds: float = field(default=30.0, metadata={"env": "ELDRIC_STALL_SECONDS", "help": "a part that receives nothing this long is retried"})
    pull_retries: int = field(default=5, metadata={"env": "ELDRIC_PULL_RETRIES", "help": "task retries for an unreachable source"})
    retry_base_seconds: float = field(default=2.0, metadata={"env": "ELDRIC_RETRY_BASE_SECONDS", "help": "first retry delay; doubles each time"})
    retry_max_seconds: float = field(default=120.0, metadata={"env": "ELDRIC_RETRY_MAX_SECONDS", "help": "longest retry delay"})
    progress_seconds: float = field(default=0.25, metadata={"env": "ELDRIC_PROGRESS_SECONDS", "help": "least time between two progress writes per worker"})
    disk_reserve_bytes: int = field(default=1 << 30, metadata={"env": "ELDRIC_DISK_RESERVE_BYTES", "help": "a download that would leave less free disk than this is refused up front"})
    shared_mounts: tuple[str, ...] = field(default=(), metadata={"env": "ELDRIC_SHARED_MOUNTS", "help": "comma list of paths where the registry's storage may be mounted (NFS); proven by its fingerprint file"})
    ollama_url: str = field(default="http://127.0.0.1:11434", metadata={"env": "ELDRIC_OLLAMA_URL", "help": "Ollama's HTTP API on this node (blob upload, create, tags)"})
    vllm_models_dir: Path | None = field(default=None, metadata={"env": "ELDRIC_VLLM_MODELS_DIR", "help": "vLLM serving path, one directory per model; default <data dir>/backends/vllm"})
    tgi_models_dir: Path | None = field(default=None, metadata={"env": "ELDRIC_TGI_MODELS_DIR", "help": "TGI model directories (its --model-id paths); default <data dir>/backends/tgi"})
    llamacpp_models_dir: Path | None = field(default=None, metadata={"env": "ELDRIC_LLAMACPP_MODELS_DIR", "help": "llama.cpp models path (GGUF files); default <data dir>/backends/llamacpp"})
    triton_repository: Path | None = field(default=None, metadata={"env": "ELDRIC_TRITON_REPOSITORY", "help": "Triton model repository (--model-repository); default <data dir>/backends/triton"})
    triton_url: str = field(default="http://127.0.0.1:8000", metadata={"env": "ELDRIC_TRITON_URL", "help": "Triton's HTTP API (repository load, model readiness)"})
    backend_timeout_seconds: float = field(default=600.0, metadata={"env": "ELDRIC_BACKEND_TIMEOUT_SECONDS", "help": "longest wait for one backend API call (blob upload, create, model load)"})

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **explicit) -> AgentSettings:
        """Explicit arguments win over ELDRIC_* variables, which win over defaults."""
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        for f in fields(cls):
            if explicit.get(f.name) is not None:
                values[f.name] = explicit[f.name]
            elif env.get(f.metadata["env"]) not in (None, ""):
                values[f.name] = _convert(f.name, f.type, env[f.metadata["env"]])
        if "data_dir" not in values and values.get("worker_id"):
            values["data_dir"] = Path.home() / ".eldric" / str(values["worker_id"])
        try:
            settings = cls(**values)  # type: ignore[arg-type]
        except TypeError as exc:
            raise SettingsError(f"missing setting: {exc}") from None
        return settings.validated()

    def validated(self) -> AgentSettings:
        if not is_valid_worker_id(self.worker_id):
            raise SettingsError(f"invalid worker name {self.worker_id!r}: use letters, digits, '.', '_', '-'")
        if self.worker_type not in WORKER_PORTS:
            raise SettingsError(f"invalid worker type {self.worker_type!r}: one of {', '.join(WORKER_PORTS)}")
        if not self.ollama_registry.startswith(("http://", "https://")):
            raise SettingsError(f"ELDRIC_OLLAMA_REGISTRY must be an http(s) URL, got {self.ollama_registry!r}")
        for name in ("concurrency", "download_parts", "part_bytes", "pull_retries"):
            if getattr(self, name) < (0 if name == "pull_retries" else 1):
                raise SettingsError(f"{name} must be positive")
        if self.port is not None and not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be 0-65535, got {self.port}")
        for name in ("heartbeat_seconds", "stall_seconds", "retry_base_seconds", "retry_max_seconds",
                     "progress_seconds", "backend_timeout_seconds"):
            value = getattr(self, name, 1.0)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise SettingsError(f"{name} must be a positive number of seconds, got {value!r}")
        return self

    @property
    def http_port(self) -> int:
        return WORKER_PORTS[self.worker_type] if self.port is None else self.port

    @property
    def models_dir(self) -> Path:
        return Path(self.ollama_models_dir) if self.ollama_models_dir else Path(self.data_dir) / "ollama" / "models"

    def retry_delay(self, retries: int) -> float:
        return backoff_delay(retries, base=self.retry_base_seconds, cap=self.retry_max_seconds)


def _convert(name: str, kind: object, raw: str) -> object:
    kind = str(kind).replace(" | None", "")
    try:
        if "tuple" in kind:
            return tuple(item.strip() for item in raw.split(",") if item.strip())
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if "Path" in kind:
            return Path(raw).expanduser()
    except ValueError:
        raise SettingsError(f"invalid value {raw!r} for {name}") from None
    return raw
