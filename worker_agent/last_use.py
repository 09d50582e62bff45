"""When each of this node's models was last used: the `last_used` of its inventory records (epoch seconds).

Sources, most truthful first, the latest of them counting:
- the agent's inference relay (worker_agent/inference_proxy.py) served a request for it: one HSET per request
  into `eldric:worker:<id>:served` (`served`), cheap next to the inference itself;
- a backend has it loaded now (Ollama's `/api/ps`, llama.cpp's or vLLM's `/v1/models`, as the loaded-models
  report says): loaded is in use, so it counts as used at the time the inventory is stamped;
- otherwise when it was pulled or installed (the inventory's `modified_at`).

The times are kept in `<data dir>/last_used.json` (written atomically), so a restarted agent, or Redis
restarted empty, does not make every model look unused since its install.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import redis

from eldric.cluster import keys, workers
from eldric.core.atomicfile import write_atomically

log = logging.getLogger(__name__)

FILE_NAME = "last_used.json"


def served(client: redis.Redis, worker_id: str, model: str, now: float | None = None) -> None:
    """The relay served `model` (its inventory name) now; a Redis error is logged, never the request's."""
    if not model:
        return
    try:
        client.hset(keys.worker_served(worker_id), model, time.time() if now is None else now)
    except redis.RedisError as exc:
        log.debug("could not record the last use of %s: %s", model, exc)


class LastUse:
    """The JSON file of model name -> last use, merged with what Redis and the backends say."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / FILE_NAME

    def read(self) -> dict[str, float]:
        try:
            found = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        if not isinstance(found, dict):
            return {}
        return {str(k): float(v) for k, v in found.items() if isinstance(v, (int, float))}

    def stamp(self, models: list[dict], *, served_at: dict[str, float], loaded: set[str],
              now: float | None = None, save: bool = True) -> list[dict]:
        """`models` (inventory records) each with `last_used`; the file keeps the result for these names only
        (`save` False: a read, as the eviction plan's)."""
        now = time.time() if now is None else now
        known = self.read()
        out, kept = [], {}
        for model in models:
            name = model["name"]
            when = max(known.get(name, 0.0), served_at.get(name, 0.0), now if name in loaded else 0.0)
            when = when or float(model.get("modified_at") or 0) or now
            kept[name] = when
            out.append({**model, "last_used": round(when, 3)})
        if save and kept != known:
            try:
                write_atomically(self.path, json.dumps(kept, sort_keys=True).encode())
            except OSError as exc:  # a full disk must not stop the inventory; eviction is what frees it
                log.warning("could not keep the models' last use in %s: %s", self.path, exc)
        return out


def stamp_inventory(agent, models: list[dict], now: float | None = None, save: bool = True) -> list[dict]:
    """The inventory `models` with `last_used`, from the relay's record, the loaded-models report and the file."""
    wid = agent.worker_id
    raw = agent.redis.hgetall(keys.worker_served(wid))
    served_at = {}
    for name, value in raw.items():
        try:
            served_at[name] = float(value)
        except ValueError:
            continue
    loaded = {m["name"] for m in workers.loaded(agent.redis, [wid])[wid]}
    return LastUse(Path(agent.settings.data_dir)).stamp(models, served_at=served_at, loaded=loaded, now=now, save=save)
