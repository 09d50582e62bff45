"""The agent's /blobs endpoint when a download it serves from finishes between look and open."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import worker_agent.server as server
from eldric.core.blobstore import BlobStore
from eldric.core.digests import Digest

DATA = bytes(range(256)) * 64


def agent_app(tmp_path: Path):
    store = SimpleNamespace(blobs=BlobStore(tmp_path / "blobs"), partial_dir=tmp_path / "partial")
    settings = SimpleNamespace(cluster_secret="s3cret", max_peer_upload_rate=0, worker_id="w", worker_type="inference")
    agent = SimpleNamespace(store=store, settings=settings, worker_id="w")
    return server.create_agent_app(agent), store


def test_a_range_of_a_download_renamed_into_the_store_after_the_look_comes_from_the_store(tmp_path, monkeypatch):
    app, store = agent_app(tmp_path)
    digest = Digest.of_bytes(DATA)
    store.blobs.path(digest).parent.mkdir(parents=True, exist_ok=True)
    store.blobs.path(digest).write_bytes(DATA)
    gone = tmp_path / "partial" / "renamed-away"  # what servable found a moment before the rename
    monkeypatch.setattr(server, "servable", lambda *a: gone)
    resp = app.test_client().get(f"/blobs/{digest}", headers={"Range": "bytes=100-299", "Authorization": "Bearer s3cret"})
    assert resp.status_code == 206, resp.get_data(as_text=True)
    assert resp.get_data() == DATA[100:300]


def test_a_blob_gone_from_both_places_is_404_naming_it(tmp_path, monkeypatch):
    app, _ = agent_app(tmp_path)
    digest = Digest.of_bytes(DATA)
    monkeypatch.setattr(server, "servable", lambda *a: tmp_path / "partial" / "renamed-away")
    resp = app.test_client().get(f"/blobs/{digest}", headers={"Range": "bytes=0-9", "Authorization": "Bearer s3cret"})
    assert resp.status_code == 404
    assert str(digest) in resp.get_json()["message"]
