"""Fixtures several unit modules share."""

from __future__ import annotations

from pathlib import Path

import pytest

from eldric.core.blobstore import BlobStore


@pytest.fixture
def blob_store(tmp_path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


@pytest.fixture
def partial(tmp_path) -> Path:
    """Where a download keeps its partial data."""
    return tmp_path / "partial"
