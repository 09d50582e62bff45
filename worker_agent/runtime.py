"""The running agent's context, installed once by the entry point and read by tasks."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING


from worker_agent.catalog import Catalog

if TYPE_CHECKING:
    import redis
from eldric.transfer.download import DownloadOptions
from eldric.transfer.ratelimit import NoLimit, TokenBucket, bucket
from worker_agent.ollama_store import OllamaStore
from worker_agent.settings import AgentSettings


@dataclass
class Agent:
    settings: AgentSettings
    redis: redis.Redis
    store: OllamaStore
    catalog: Catalog
    # Set by the process's shutdown (SIGTERM: worker_agent/celery_app.stop_downloads_on_shutdown); every
    # download stops at its next read and keeps its partial data, so a restart resumes it.
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def worker_id(self) -> str:
        return self.settings.worker_id

    @cached_property
    def download_limiter(self) -> TokenBucket | NoLimit:
        """ELDRIC_MAX_DOWNLOAD_RATE: one bucket for every download of this process."""
        return bucket(self.settings.max_download_rate)

    @property
    def download_options(self) -> DownloadOptions:
        s = self.settings
        return DownloadOptions(parts=s.download_parts, part_bytes=s.part_bytes,
                               stall_seconds=s.stall_seconds, limiter=self.download_limiter, stop=self.stopping)


_current: Agent | None = None


def install(agent: Agent) -> None:
    global _current
    _current = agent


def current() -> Agent:
    if _current is None:
        raise RuntimeError("the agent runtime is not installed (start tasks through `eldric worker`)")
    return _current
