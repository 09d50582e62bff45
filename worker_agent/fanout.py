"""One job's downloads on this worker, shared with its peers: a swarm per blob, the job's caps, the tally.

The README's "Peer-assisted fan-out" says what the swarm promises. Here it is wired to
a job: every blob of a pull or distribution (sources `ollama`, `registry`, `url` with a
known sha256) joins the blob's swarm (eldric.cluster.swarmboard), the job's request fields
`max_upstream_workers` and `max_upstream_rate` become the swarm's slot cap and a bucket
all its workers share, and the progress record says how many bytes came from upstream and
how many from which peer (`upstream_bytes`, `peer_bytes`, `peers`, `bad_peers`), and `alone`
when a blob was fetched without its peers because the board could not be reached.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import redis
import requests

from eldric.cluster import keys
from eldric.cluster.jobs.progress import Progress
from eldric.cluster.swarmboard import RedisSwarmBoard, UpstreamRateCap, leave_swarms as leave_boards
from eldric.core.blobstore import BlobStore
from eldric.core.digests import Digest
from eldric.transfer.http import CONNECT_TIMEOUT, bearer, http_session, pace_receive
from eldric.transfer.swarm import Swarm, SwarmOptions
from worker_agent.runtime import Agent

log = logging.getLogger(__name__)


class Fanout:
    def __init__(self, agent: Agent, progress: Progress, job_options: dict | None = None, *,
                 from_peer: str | None = None) -> None:
        """`from_peer`: the job's source is that worker (distribute from a peer): every byte is a peer byte."""
        opts = job_options or {}
        self.agent, self.progress, self.from_peer = agent, progress, from_peer
        self.enabled = agent.settings.peer_fanout and from_peer is None
        self.options = SwarmOptions(max_upstream_workers=int(opts.get("max_upstream_workers") or 0),
                                    upstream_connections=agent.settings.download_parts,
                                    upstream_ranges=agent.settings.download_parts,
                                    lease_seconds=max(agent.settings.stall_seconds, 10.0),
                                    peer_range_base_seconds=agent.settings.peer_range_base_seconds,
                                    peer_min_rate=agent.settings.peer_min_rate)
        self.upstream_rate = 0 if from_peer else int(opts.get("max_upstream_rate") or 0)
        self.upstream_take = None
        if self.upstream_rate:
            fetchers = _fetchers(agent, progress.job_id, self.options.max_upstream_workers)
            self.upstream_take = UpstreamRateCap(agent.redis, progress.job_id, self.upstream_rate, fetchers).take
        self._session: requests.Session | None = None
        self._swarms: list[Swarm] = []
        self._lock = threading.Lock()
        self._fields_at = -float("inf")
        self._network = 0  # bytes received over the network for this job (a failed peer range is taken back)
        self._headers = bearer(agent.settings.cluster_secret)

    def pace(self, session: requests.Session) -> requests.Session:
        """Small receive buffers on `session` when a cap applies (the source's, here): see pace_receive.

        Sized by the job's whole rate, not a worker's share: one connection may carry all of it
        (at most ELDRIC_DOWNLOAD_PARTS ranges are in flight from upstream cluster-wide, so their
        buffers' first fill stays ~0.1 s of the rate), and a smaller window would cap a connection
        below the rate over a WAN's round trip.
        """
        caps = [c for c in (self.agent.settings.max_download_rate, self.upstream_rate) if c]
        return pace_receive(session, min(caps)) if caps else session

    def swarm(self, digest: Digest | None) -> Swarm | None:
        """The swarm of blob `digest` (None when sharing is off or the digest unknown)."""
        if not self.enabled or digest is None:
            return None
        board = RedisSwarmBoard(self.agent.redis, str(digest), self.agent.worker_id,
                                lease_seconds=self.options.lease_seconds)
        swarm = Swarm(board, self._open_peer(str(digest)), self.options)
        with self._lock:
            self._swarms.append(swarm)
        return swarm

    def _open_peer(self, digest: str):
        def open_peer(address: str, start: int, end: int, read_timeout: float) -> requests.Response:
            with self._lock:  # the download's connections open peers at once: one session for them all
                if self._session is None:
                    self._session = http_session()  # peers are inside the cluster: no egress proxy
                    if self.agent.settings.max_download_rate:
                        pace_receive(self._session, self.agent.settings.max_download_rate)
            return self._session.get(f"{address.rstrip('/')}/blobs/{digest}", stream=True,
                                     headers={**self._headers, "Range": f"bytes={start}-{end}"},
                                     timeout=(CONNECT_TIMEOUT, read_timeout))
        return open_peer

    def on_bytes(self, n: int) -> None:
        """The download engine's byte callback: progress, with the upstream/peer split."""
        with self._lock:
            self._network += n
            now = time.monotonic()
            due = now - self._fields_at >= self.progress.min_interval
            if due:
                self._fields_at = now
        if due:  # the record is written at most every min_interval: refresh the split only as often
            self.progress.update(**self.fields())
        self.progress.add_bytes(n)

    def fields(self) -> dict:
        with self._lock:
            swarms, network = list(self._swarms), self._network
        peers: dict[str, int] = {}
        bad: dict[str, str] = {}
        alone = None
        for s in swarms:
            stats = s.stats()
            alone = alone or stats["alone"]
            for peer, n in stats["peers"].items():
                if n:  # a peer whose every byte was taken back (a range that failed) sent nothing
                    peers[peer] = peers.get(peer, 0) + n
            bad.update(stats["bad_peers"])
        if self.from_peer is not None:
            peers = {self.from_peer: network}
        peer_bytes = sum(peers.values())
        out = {"upstream_bytes": max(0, network - peer_bytes), "peer_bytes": peer_bytes, "peers": peers}
        if bad:
            out["bad_peers"] = bad
        if alone:
            out["alone"] = alone
        return out

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


def _fetchers(agent: Agent, job_id: str, max_upstream_workers: int) -> int:
    """How many workers may fetch the job's blobs from upstream at once: its targets, or fewer by its cap."""
    try:
        targets = int(agent.redis.hlen(keys.job_workers(job_id)))
    except redis.RedisError:
        targets = 1  # sized for one fetcher: the cap still holds, bursts are only larger
    targets = max(1, targets)
    return min(targets, max_upstream_workers) if max_upstream_workers else targets


def leave_swarms(client: redis.Redis, worker_id: str, blobs: BlobStore, digests: Iterable[Digest | str]) -> None:
    """This node deleted those blobs (or their partial data): off their swarm boards, so no peer asks it for them
    (issue 22: a pull after a delete otherwise took every range from upstream again). Blobs still in the store
    stay listed. With Redis away the board stays as it was, and the peers' 416 corrects it range by range."""
    gone = sorted({str(d) for d in (Digest.parse(str(x)) for x in digests) if not blobs.has(d)})
    if not gone:
        return
    try:
        ranges = leave_boards(client, worker_id, gone)
    except redis.RedisError as exc:
        log.warning("could not take this worker off the swarm boards of %d blob(s): %s", len(gone), exc)
        return
    if ranges:
        log.info("off the swarm boards of %d blob(s) (%d ranges): %s", len(gone), ranges, ", ".join(gone))
