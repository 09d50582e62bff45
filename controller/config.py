"""Every controller setting: its default, its environment variable, its meaning.

Precedence: these defaults, then ELDRIC_* environment variables, then the mapping
passed to create_app (tests). Flask's config takes them under upper-case names
(`REDIS_URL`, `API_TOKEN`, …), the variable without its `ELDRIC_` prefix.
"""

from __future__ import annotations

from collections.abc import Mapping

from typing import Annotated

from pydantic import AfterValidator, Field

from controller.cors import checked_origins
from eldric.core.settings import CommaList, Size

from eldric.cluster.shared_settings import AddressPolicySettings, RedisSettings, UpstreamSettings


class ControllerSettings(AddressPolicySettings, UpstreamSettings, RedisSettings):
    """The agents' upstream settings and allow-list are read here too: a name or a literal address no
    agent may reach is refused with 400 before queuing."""

    api_token: str = Field("", description="when set, every /api/v1 call needs `Authorization: Bearer <token>`")
    cluster_secret: str = Field("", description="shared secret of controller and agents (agent-to-agent and agent-to-controller calls)")
    job_deadline_seconds: int = Field(6 * 3600, ge=1, description="a worker that has not finished its part by then is failed")
    stale_worker_seconds: int = Field(120, ge=1, description="a worker silent this long mid-pull, and offline, is failed")
    offline_grace_seconds: int = Field(300, ge=0, description="a worker offline at a job's start, or this long during it, ends `skipped` (caught up later)")
    job_retention_seconds: int = Field(7 * 24 * 3600, ge=0, description="finished jobs older than this are forgotten")
    job_history_max: int = Field(1000, ge=1, description="at most this many jobs are kept")
    worker_forget_seconds: int = Field(7 * 24 * 3600, ge=0, description="a worker offline this long leaves the worker list")
    check_upstream: bool = Field(True, description="ask the agents' registry for a pull's manifest once before queuing "
                                 "(404 for a typo, 502 when unreachable); false where the controller has no route to it")
    registry_url: str = Field("http://127.0.0.1:8892", description="the data worker's model registry")
    placement_reserve_bytes: Size = Field(1 << 30, description="free disk placement leaves on every worker: a copy goes "
                                          "only where the model fits with this much to spare (bytes or K/M/G/T)")
    view_cache_seconds: float = Field(1.0, ge=0, le=60, description="GET /api/v1/workers and /api/v1/models answers are reused this long per process (0: off)")
    controller_host: str = Field("127.0.0.1", description="where `eldric controller` listens")
    controller_port: int = Field(8880, ge=0, le=65535, description="where `eldric controller` listens")
    cors_origins: Annotated[CommaList, AfterValidator(checked_origins)] = Field(
        (), description="comma list of page origins (scheme://host[:port]) whose pages may call the Ollama (/, /api/*"
        " but /api/v1) and OpenAI (/v1/*) endpoints; * for any; unset: no CORS headers")
    log_level: str = Field("INFO", description="log level of the controller process")


# Flask config names of the settings the app reads (the listen address is the command's).
SETTINGS = tuple(name.upper() for name in ControllerSettings.model_fields
                 if name not in ("controller_host", "controller_port", "log_level"))


def from_env(env: Mapping[str, str] | None = None) -> dict[str, object]:
    values = ControllerSettings.from_env(env)
    return {name: getattr(values, name.lower()) for name in SETTINGS}
