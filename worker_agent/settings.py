"""AgentSettings.from_env(): the agent's only reader of the environment (pydantic-settings, see eldric.core.settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator
from pydantic_settings import NoDecode

from eldric.cluster.labels import parse_labels
from eldric.cluster.queues import WORKER_PORTS, is_valid_worker_id
from eldric.cluster.shared_settings import AddressPolicySettings, RedisSettings, UpstreamSettings
from eldric.core.settings import CommaList, Size, UserPath
from eldric.transfer.retry import backoff_delay
from eldric.web.client_limits import HttpLimitsSettings
from worker_agent.watermarks import Watermarks

Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _labels(value: object) -> object:
    return parse_labels(value) if isinstance(value, str) else value


# `zone=a,gpu=h100` in the environment or on the command line (not JSON); a dict as it is.
Labels = Annotated[dict[str, str], NoDecode, BeforeValidator(_labels)]


class AgentSettings(HttpLimitsSettings, AddressPolicySettings, UpstreamSettings, RedisSettings):
    """Redis, the upstream registries, the allow-list and the HTTP server's slow-client limits are shared blocks."""

    worker_id: str = Field(..., validation_alias="ELDRIC_WORKER_NAME", description="this node's worker id")
    worker_type: str = Field(..., description="inference, cloud, data, science, training, media or comm")
    data_dir: UserPath | None = Field(None, description="agent state; default ~/.eldric/<worker id>")
    host: str = Field("127.0.0.1", validation_alias="ELDRIC_AGENT_HOST", description="address the agent's HTTP server binds")
    port: int | None = Field(None, ge=0, le=65535, validation_alias="ELDRIC_AGENT_PORT", description="agent HTTP port; default the type's port; 0 picks a free one")
    advertise_url: str = Field("", validation_alias="ELDRIC_AGENT_ADVERTISE_URL", description="URL peers use to reach this agent; default http://host:port")
    ollama_models_dir: UserPath | None = Field(None, validation_alias="ELDRIC_OLLAMA_MODELS", description="Ollama's model store (OLLAMA_MODELS); default <data dir>/ollama/models")
    cluster_secret: str = Field("", description="shared secret for agent-to-agent and agent-to-controller calls")
    registry_url: str = Field("", description="the data node's registry (as on the controller): models created or "
                              "pushed through the controller's Ollama API are pulled from its /v2/; "
                              "empty: such pulls fail")
    labels: Labels = Field({}, description="comma list of key=value labels of this node "
                           "(zone=a,gpu=h100), shown in the worker views and matched by placement selectors")
    backends: CommaList = Field(("ollama",), description="comma list of backends this node serves")
    heartbeat_seconds: Seconds = Field(5.0, description="heartbeat period; offline after 3 missed")
    concurrency: int = Field(4, ge=1, validation_alias="ELDRIC_AGENT_CONCURRENCY", description="tasks run at once (threads)")
    max_download_rate: Size = Field(0, description="cap on this worker's download rate in bytes/s, all downloads together (K/M/G suffixes); 0 = no cap")
    max_peer_upload_rate: Size = Field(0, description="cap on the rate this worker serves blobs to peers in bytes/s (K/M/G suffixes); 0 = no cap")
    peer_fanout: bool = Field(True, description="share blobs with the other workers of a pull (each range from upstream once per cluster); false: every worker downloads alone")
    download_parts: int = Field(8, ge=1, description="most parallel HTTP range connections per blob (opened one by one while the link is slow)")
    part_bytes: Size = Field(64 << 20, ge=1, description="size of each HTTP range request (K/M/G suffixes)")
    stall_seconds: Seconds = Field(30.0, description="a part that receives nothing this long is retried")
    peer_range_base_seconds: Seconds = Field(10.0, description="grace of a range from a peer before its rate is judged")
    peer_min_rate: Size = Field(256 << 10, description="bytes/s a range from a peer must keep up after that grace, else the peer is dropped for the blob (K/M/G suffixes); 0 = no minimum")
    pull_retries: int = Field(5, ge=0, description="task retries for an unreachable source")
    retry_base_seconds: Seconds = Field(2.0, description="first retry delay; doubles each time")
    retry_max_seconds: Seconds = Field(120.0, description="longest retry delay")
    progress_seconds: Seconds = Field(0.25, description="least time between two progress writes per worker")
    disk_reserve_bytes: Size = Field(1 << 30, description="a download that would leave less free disk than this is refused up front (K/M/G suffixes)")
    shared_mounts: CommaList = Field((), description="comma list of paths where the registry's storage may be mounted (NFS); proven by its fingerprint file")
    disk_high_watermark: str = Field("", description="above this share of the store's filesystem (90%) or bytes used (40G), "
                                     "least-recently-used models are evicted; empty: never")
    disk_low_watermark: str = Field("", description="eviction goes on until the store's filesystem is under this (85% or bytes "
                                    "used); empty: the high watermark")
    ollama_url: str = Field("http://127.0.0.1:11434", description="Ollama's HTTP API on this node (blob upload, create, tags)")
    vllm_models_dir: UserPath | None = Field(None, description="vLLM serving path, one directory per model; default <data dir>/backends/vllm")
    tgi_models_dir: UserPath | None = Field(None, description="TGI model directories (its --model-id paths); default <data dir>/backends/tgi")
    llamacpp_models_dir: UserPath | None = Field(None, description="llama.cpp models path (GGUF files); default <data dir>/backends/llamacpp")
    triton_repository: UserPath | None = Field(None, description="Triton model repository (--model-repository); default <data dir>/backends/triton")
    triton_url: str = Field("http://127.0.0.1:8000", description="Triton's HTTP API (repository load, model readiness)")
    llamacpp_url: str = Field("", description="a llama.cpp server (llama-server) on this node whose /v1/models is asked after an install; empty: none")
    vllm_url: str = Field("", description="a vLLM server on this node whose /v1/models is asked after an install; empty: none")
    log_level: str = Field("INFO", description="log level of the agent process")
    debris_sweep: Literal["report", "remove"] = Field("report", description="what the debris sweep does with backend entries no model of this node owns: report them, or also remove those Eldric placed")
    gc_grace_seconds: float = Field(3600.0, ge=0, allow_inf_nan=False, description="a GC find (a blob nothing references, a stale partial, backend debris) is removed only once it was garbage this long; found again referenced meanwhile, it is dropped")
    backend_timeout_seconds: Seconds = Field(600.0, description="longest wait for one backend API call (blob upload, create, model load)")

    @field_validator("worker_id")
    @classmethod
    def _worker_name(cls, value: str) -> str:
        if not is_valid_worker_id(value):
            raise ValueError(f"invalid worker name {value!r}: use letters, digits, '.', '_', '-'")
        return value

    @field_validator("worker_type")
    @classmethod
    def _worker_type(cls, value: str) -> str:
        if value not in WORKER_PORTS:
            raise ValueError(f"invalid worker type {value!r}: one of {', '.join(WORKER_PORTS)}")
        return value

    @field_validator("llamacpp_url", "vllm_url", "registry_url")
    @classmethod
    def _server_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL or empty, got {value!r}")
        return value

    @model_validator(mode="after")
    def _watermarks(self) -> AgentSettings:
        Watermarks.parse(self.disk_high_watermark, self.disk_low_watermark)  # a bad value stops the agent at start
        return self

    @property
    def watermarks(self) -> Watermarks:
        return Watermarks.parse(self.disk_high_watermark, self.disk_low_watermark)

    @model_validator(mode="after")
    def _default_data_dir(self) -> AgentSettings:
        if self.data_dir is None:
            # Frozen model: the one derived default is filled in while the model is built.
            self.__dict__["data_dir"] = Path.home() / ".eldric" / self.worker_id
        return self

    @property
    def http_port(self) -> int:
        return WORKER_PORTS[self.worker_type] if self.port is None else self.port

    @property
    def models_dir(self) -> Path:
        return Path(self.ollama_models_dir) if self.ollama_models_dir else Path(self.data_dir) / "ollama" / "models"

    def retry_delay(self, retries: int) -> float:
        return backoff_delay(retries, base=self.retry_base_seconds, cap=self.retry_max_seconds)
