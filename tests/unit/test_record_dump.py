"""controller.schemas.Records: the fast dump of worker and job-part lists answers byte for byte as marshmallow."""

from __future__ import annotations

import json

import pytest
from marshmallow import Schema, fields, post_dump

from controller.schemas import Records, WorkerProgressSchema, WorkerSchema, record_dumper

PARTS = [
    {"worker": "w1", "state": "pulling", "status": "pulling sha256:ab", "completed": 5, "total": 10,
     "percent": 50.0, "layer": "sha256:ab", "error": None, "rate": 12.5, "peers": {"w2": 3},
     "upstream_bytes": 2, "peer_bytes": 3, "started_at": 1.0, "updated_at": 2.0, "finished_at": None},
    {"worker": "w2", "state": "completed", "percent": 100, "completed": 10.0, "total": "10", "rate": 7,
     "peers": {"w1": 4.0}, "bad_peers": {"w3": "digest mismatch"}, "shared": 1, "unknown_extra": [1, 2]},
    {"worker": "w3"},  # keys it lacks are left out, as marshmallow does
    {"worker": "w4", "state": "failed", "error": "x" * 3, "transferred": True, "percent": "12.5"},
]
WORKERS = [
    {"id": "w1", "type": "inference", "address": "http://w1:8890", "backends": ["ollama"],
     "backend_details": {"ollama": {"models_dir": "/m"}}, "free_disk": 10, "online": True, "last_seen": 1.5,
     "registered_at": 1.0, "hostname": None, "models": 3, "data_dir": "/d", "upstream_registry": None},
    {"id": "w2", "type": "data", "address": None, "backends": [], "backend_details": {}, "free_disk": 0,
     "online": False, "last_seen": 0.0, "registered_at": 2, "hostname": "h", "models": 0, "data_dir": None,
     "upstream_registry": "https://registry.ollama.ai"},
]


@pytest.mark.parametrize("schema, records", [(WorkerProgressSchema, PARTS), (WorkerSchema, WORKERS)])
def test_the_same_json_as_marshmallows_nested_list(schema, records):
    class Plain(Schema):
        items = fields.List(fields.Nested(schema))

    class Fast(Schema):
        items = Records(schema)

    assert json.dumps(Fast().dump({"items": records})) == json.dumps(Plain().dump({"items": records}))
    assert Fast().dump({"items": None}) == {"items": None}


def test_a_schema_with_hooks_keeps_marshmallows_dump():
    class Hooked(Schema):
        name = fields.String()

        @post_dump
        def shout(self, data, **_kw):
            return {"name": data["name"].upper()}

    assert record_dumper(Hooked())({"name": "a"}) == {"name": "A"}
