"""The flask-smorest Blueprint every API of ours uses: JSON bodies bounded and storable, rules documented.

webargs reads a JSON body itself, so its parser reads it through the one JSON body reader
(`eldric.web.json_bodies`: size, UTF-8, nesting and lone surrogates bounded) and answers a refusal
in webargs' shape (`errors: {"json": [...]}`) before any view runs.

A marshmallow schema may carry `OPENAPI_RULES`, JSON Schema keywords about the whole object
(`anyOf` for "source training needs lineage.base_model"); the Blueprint copies them into the
schema's OpenAPI component, which apispec cannot express from fields alone.
"""

from __future__ import annotations

from typing import Any

import flask
import flask_smorest
from webargs import core
from webargs.flaskparser import FlaskParser, abort, is_json_request

from eldric.core.request_errors import RequestError
from eldric.web.json_bodies import read_json_body


class BoundedJSONParser(FlaskParser):
    def _raw_load_json(self, req: flask.Request) -> Any:
        if not is_json_request(req):
            return core.missing
        try:
            return read_json_body(req)
        except RequestError as exc:  # 413 or 400, in webargs' shape
            abort(exc.status, message=str(exc), messages={"json": [str(exc)]})


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = BoundedJSONParser()

    def register_views_in_doc(self, api: flask_smorest.Api, app: flask.Flask, spec: Any, *, name: str,
                              parameters: list | None) -> None:
        super().register_views_in_doc(api, app, spec, name=name, parameters=parameters)
        for key, component in api.ma_plugin.converter.refs.items():
            rules = getattr(key[0], "OPENAPI_RULES", None)
            if rules and component in spec.components.schemas:
                spec.components.schemas[component].update(rules)
