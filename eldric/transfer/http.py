"""The HTTP session every service and client of ours starts from."""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter

BLOCK = 1 << 20


class _BigBlocks(HTTPAdapter):
    """Send request bodies in 1 MiB blocks (urllib3's default is 16 KiB: 64x the system calls)."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["blocksize"] = BLOCK
        super().init_poolmanager(*args, **kwargs)


def http_session(trust_env: bool = False) -> requests.Session:
    """A session with big send blocks; `trust_env=False`: cluster-internal traffic takes no egress proxy."""
    session = requests.Session()
    session.trust_env = trust_env
    for prefix in ("http://", "https://"):
        session.mount(prefix, _BigBlocks())
    return session
