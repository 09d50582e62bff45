"""The flask-smorest Blueprint every API of ours uses: JSON bodies bounded and storable, rules documented.

webargs reads a JSON body itself (`request.get_data()` then `json.loads`), so the limits
sit in its parser, not in Flask's JSON provider:

- at most `MAX_JSON_BYTES`, counted while reading (a chunked body has no Content-Length to
  check first), else 413;
- no lone UTF-16 surrogates (`"\\ud800"`): JSON allows them as escapes, but they cannot be
  encoded as UTF-8, so SQLite, Redis and the file system would fail on them later with a 500.
  They are refused as invalid JSON (400) before any view runs.

A marshmallow schema may carry `OPENAPI_RULES`, JSON Schema keywords about the whole object
(`anyOf` for "source training needs lineage.base_model"); the Blueprint copies them into the
schema's OpenAPI component, which apispec cannot express from fields alone.
"""

from __future__ import annotations

import json
import re
from typing import Any

import flask
import flask_smorest
from webargs import core
from webargs.flaskparser import FlaskParser, abort, is_json_request

MAX_JSON_BYTES = 1 << 20
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]", re.ASCII)


def has_lone_surrogate(value: Any) -> bool:
    """Whether a decoded JSON value holds a string (or key) that UTF-8 cannot encode."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class BoundedJSONParser(FlaskParser):
    def _raw_load_json(self, req: flask.Request) -> Any:
        if not is_json_request(req):
            return core.missing
        if (req.content_length or 0) > MAX_JSON_BYTES:  # refused unread (the registry drains it after the answer)
            abort(413, message=f"JSON body larger than {MAX_JSON_BYTES} bytes")
        if req.content_length is None:
            req.max_content_length = MAX_JSON_BYTES  # chunked: werkzeug stops reading with 413 past the limit
        text = req.get_data(cache=True)
        value = core.parse_json(text)
        if _SURROGATE_ESCAPE.search(text.decode("utf-8", "replace")) and has_lone_surrogate(value):
            problem = "a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff), which is not text"
            abort(400, message=f"invalid JSON body: {problem}", messages={"json": [problem]})
        return value


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = BoundedJSONParser()

    def register_views_in_doc(self, api: flask_smorest.Api, app: flask.Flask, spec: Any, *, name: str,
                              parameters: list | None) -> None:
        super().register_views_in_doc(api, app, spec, name=name, parameters=parameters)
        for key, component in api.ma_plugin.converter.refs.items():
            rules = getattr(key[0], "OPENAPI_RULES", None)
            if rules and component in spec.components.schemas:
                spec.components.schemas[component].update(rules)
