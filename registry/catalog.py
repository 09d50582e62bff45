"""Model metadata in SQLite: models (drafts and ready ones), their files, upload sessions, imports.

Why SQLite: version assignment, blob reference counts and "delete the blob if
nothing references it" must be atomic across the threads of one server (and safe
if a second process opens the same storage). Every mutation runs in a
`BEGIN IMMEDIATE` transaction, which takes the database's write lock first, so
two commits of the same name can never pick the same version, and a blob is never
deleted while another transaction links it. Each thread gets its own connection.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator

DRAFT = "draft"
READY = "ready"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, version TEXT, requested_version TEXT, state TEXT NOT NULL,
    format TEXT, source TEXT NOT NULL, description TEXT, lineage TEXT, origin TEXT, details TEXT,
    size INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, updated_at REAL NOT NULL, committed_at REAL);
CREATE UNIQUE INDEX IF NOT EXISTS models_name_version ON models(name, version) WHERE state = 'ready';
CREATE INDEX IF NOT EXISTS models_listing ON models(state, created_at);
CREATE TABLE IF NOT EXISTS files (
    model_id TEXT NOT NULL, path TEXT NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL, info TEXT,
    PRIMARY KEY (model_id, path));
CREATE INDEX IF NOT EXISTS files_digest ON files(digest);
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY, model_id TEXT NOT NULL, path TEXT NOT NULL, size INTEGER, digest TEXT,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS imports (
    id TEXT PRIMARY KEY, spec TEXT NOT NULL, state TEXT NOT NULL, draft_id TEXT, model_id TEXT, error TEXT,
    completed INTEGER NOT NULL DEFAULT 0, total INTEGER NOT NULL DEFAULT 0, status TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
-- The /v2/ API (registry/oci/store.py): blobs it holds (pushed, mirrored, derived), manifests, tags.
-- A blob in blobs/ stays while a `files` row or an `oci_blobs` row names it.
CREATE TABLE IF NOT EXISTS oci_blobs (
    digest TEXT PRIMARY KEY, size INTEGER NOT NULL, origin TEXT NOT NULL, created_at REAL NOT NULL,
    last_used REAL NOT NULL);
CREATE TABLE IF NOT EXISTS oci_manifests (
    repo TEXT NOT NULL, digest TEXT NOT NULL, media_type TEXT NOT NULL, body BLOB NOT NULL, origin TEXT NOT NULL,
    created_at REAL NOT NULL, last_used REAL NOT NULL, PRIMARY KEY (repo, digest));
CREATE TABLE IF NOT EXISTS oci_manifest_blobs (
    repo TEXT NOT NULL, manifest TEXT NOT NULL, blob TEXT NOT NULL, PRIMARY KEY (repo, manifest, blob));
CREATE INDEX IF NOT EXISTS oci_manifest_blobs_blob ON oci_manifest_blobs(blob);
CREATE TABLE IF NOT EXISTS oci_tags (
    repo TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL, origin TEXT NOT NULL, resolved_at REAL NOT NULL,
    upstream_digest TEXT, checked_at REAL, check_error TEXT, PRIMARY KEY (repo, tag));
"""
_JSON_COLUMNS = ("lineage", "origin", "details", "spec", "info")
_AUTO_VERSION = re.compile(r"^v(\d{1,9})$")


def _row(row: sqlite3.Row | None) -> dict | None:
    if row is None:
        return None
    out = dict(row)
    for key in _JSON_COLUMNS:
        if key in out:
            out[key] = json.loads(out[key]) if out[key] else None
    return out


def _dump(value: object) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


class Tx:
    """The write operations, run inside one BEGIN IMMEDIATE transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def model(self, model_id: str) -> dict | None:
        return _row(self.conn.execute("SELECT * FROM models WHERE id = ?", (model_id,)).fetchone())

    def files(self, model_id: str) -> list[dict]:
        rows = self.conn.execute("SELECT * FROM files WHERE model_id = ? ORDER BY path", (model_id,))
        return [_row(r) for r in rows]

    def insert_model(self, record: dict) -> None:
        cols = list(record)
        values = [_dump(record[c]) if c in _JSON_COLUMNS else record[c] for c in cols]
        self.conn.execute(f"INSERT INTO models ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", values)

    def put_file(self, model_id: str, path: str, digest: str, size: int, info: dict, now: float) -> str | None:
        """Link `digest` at `path` in the model; return the digest it replaced, if any."""
        old = self.conn.execute("SELECT digest FROM files WHERE model_id = ? AND path = ?", (model_id, path)).fetchone()
        self.conn.execute("INSERT OR REPLACE INTO files (model_id, path, digest, size, info) VALUES (?, ?, ?, ?, ?)",
                          (model_id, path, digest, size, _dump(info)))
        self.touch(model_id, now)
        return old["digest"] if old else None

    def is_referenced(self, digest: str) -> bool:
        """Whether a model file or the /v2/ store (registry/oci) still holds the blob."""
        return self.conn.execute("SELECT 1 FROM files WHERE digest = ? UNION ALL SELECT 1 FROM oci_blobs "
                                 "WHERE digest = ? LIMIT 1", (digest, digest)).fetchone() is not None

    def delete_model(self, model_id: str) -> list[str]:
        """Remove the model and its file links; return the digests it linked."""
        digests = [r["digest"] for r in self.conn.execute("SELECT DISTINCT digest FROM files WHERE model_id = ?",
                                                          (model_id,))]
        self.conn.execute("DELETE FROM files WHERE model_id = ?", (model_id,))
        self.conn.execute("DELETE FROM models WHERE id = ?", (model_id,))
        return digests

    def version_taken(self, name: str, version: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM models WHERE name = ? AND version = ? AND state = ?",
                                (name, version, READY)).fetchone()
        return row is not None

    def ready_twin(self, name: str, files: set[tuple[str, str]]) -> dict | None:
        """The newest ready model of `name` holding exactly `files` ((path, digest) pairs), if one does."""
        rows = self.conn.execute("SELECT id, version FROM models WHERE name = ? AND state = ? "
                                 "ORDER BY committed_at DESC", (name, READY)).fetchall()
        for row in rows:
            held = {(f["path"], f["digest"]) for f in
                    self.conn.execute("SELECT path, digest FROM files WHERE model_id = ?", (row["id"],))}
            if held == files:
                return dict(row)
        return None

    def next_version(self, name: str) -> str:
        """`v<n+1>` where n is the highest `v<n>` version of the name (so v1, v2, ...)."""
        rows = self.conn.execute("SELECT version FROM models WHERE name = ? AND state = ?", (name, READY))
        numbers = [int(m.group(1)) for r in rows if (m := _AUTO_VERSION.match(r["version"] or ""))]
        return f"v{max(numbers, default=0) + 1}"

    def mark_ready(self, model_id: str, *, version: str, fmt: str, details: dict, lineage: dict | None,
                   size: int, now: float) -> None:
        self.conn.execute("UPDATE models SET state = ?, version = ?, format = ?, details = ?, lineage = ?, size = ?, "
                          "committed_at = ?, updated_at = ? WHERE id = ?",
                          (READY, version, fmt, _dump(details), _dump(lineage), size, now, now, model_id))

    def touch(self, model_id: str, now: float) -> None:
        self.conn.execute("UPDATE models SET updated_at = ? WHERE id = ?", (now, model_id))

    def insert_upload(self, record: dict) -> None:
        self.conn.execute("INSERT INTO uploads (id, model_id, path, size, digest, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                          (record["id"], record["model_id"], record["path"], record["size"], record["digest"],
                           record["created_at"]))

    def delete_upload(self, upload_id: str) -> None:
        self.conn.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))

    def uploads_of(self, model_id: str) -> list[dict]:
        return [_row(r) for r in self.conn.execute("SELECT * FROM uploads WHERE model_id = ?", (model_id,))]

    def save_import(self, record: dict) -> None:
        cols = list(record)
        values = [_dump(record[c]) if c in _JSON_COLUMNS else record[c] for c in cols]
        self.conn.execute(f"INSERT OR REPLACE INTO imports ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                          values)

    def update_import(self, import_id: str, **fields: object) -> None:
        assignments = ", ".join(f"{k} = ?" for k in fields)
        self.conn.execute(f"UPDATE imports SET {assignments} WHERE id = ?", (*fields.values(), import_id))


class Catalog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
        conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield Tx(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def model(self, model_id: str) -> dict | None:
        tx = Tx(self._conn())
        model = tx.model(model_id)
        if model is not None:
            model["files"] = tx.files(model_id)
        return model

    def list_models(self, *, state: str = READY, fmt: str | None = None, source: str | None = None,
                    name: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[dict], int]:
        """Newest first, with their files; and the total matching the filters."""
        where, args = ["state = ?"], [state]
        for column, value in (("format", fmt), ("source", source), ("name", name)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        clause = " AND ".join(where)
        conn = self._conn()
        total = conn.execute(f"SELECT COUNT(*) FROM models WHERE {clause}", args).fetchone()[0]
        rows = conn.execute(f"SELECT * FROM models WHERE {clause} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                            (*args, limit, offset)).fetchall()
        models = [_row(r) for r in rows]
        tx = Tx(conn)
        for model in models:
            model["files"] = tx.files(model["id"])
        return models, total

    def upload(self, upload_id: str) -> dict | None:
        return _row(self._conn().execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone())

    def uploads_of(self, model_id: str) -> list[dict]:
        return Tx(self._conn()).uploads_of(model_id)

    def all_uploads(self) -> list[dict]:
        return [_row(r) for r in self._conn().execute("SELECT * FROM uploads")]

    def stale_drafts(self, before: float) -> list[str]:
        rows = self._conn().execute("SELECT id FROM models WHERE state = ? AND updated_at < ?", (DRAFT, before))
        return [r["id"] for r in rows]

    def referenced_digests(self) -> set[str]:
        """Digests of model files and of blobs the /v2/ store holds: startup cleanup keeps these."""
        return {r["digest"] for r in self._conn().execute("SELECT digest FROM files UNION SELECT digest FROM oci_blobs")}

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, for reads outside a transaction (registry/oci reads its tables here)."""
        return self._conn()

    def import_record(self, import_id: str) -> dict | None:
        return _row(self._conn().execute("SELECT * FROM imports WHERE id = ?", (import_id,)).fetchone())

    def unfinished_imports(self) -> list[dict]:
        rows = self._conn().execute("SELECT * FROM imports WHERE state IN ('pending', 'running') ORDER BY created_at")
        return [_row(r) for r in rows]
