"""/api/v1/pins: desired state — models every eligible worker (or the listed ones, or N of them) must hold."""

from typing import ClassVar

from flask.views import MethodView
from marshmallow import Schema, fields, validate

from controller import pins
from controller.schemas import PlacementSchema, model_name_field, worker_ids_field
from controller.state import redis_client, registry_client, upstreams
from eldric.core.names import OLLAMA_NAME_PATTERN
from eldric.web.blueprints import Blueprint

blp = Blueprint("pins", __name__, url_prefix="/api/v1/pins",
                description="Pinned models: beat pulls them to every eligible worker lacking them, new workers too, "
                            "or keeps N serving copies where placement puts them")


class PinRequestSchema(PlacementSchema):
    # Documented in OpenAPI (eldric.web.blueprints); controller.pins.pin_model enforces it (400 naming auto_update).
    OPENAPI_RULES: ClassVar[dict] = {"anyOf": [{"properties": {"source": {"enum": ["ollama"]}}},
                                               {"properties": {"auto_update": {"enum": [False]}}}]}

    model = model_name_field("Ollama model name, e.g. qwen2.5:0.5b; source registry: a registry model id or "
                             "name[:version]", required=True)
    workers = worker_ids_field("worker ids; default every inference and cloud worker, including those that join later",
                               allow_none=True)
    source = fields.String(load_default="ollama", validate=validate.OneOf(["ollama", "registry", "cluster"]), metadata={
        "description": "ollama: an Ollama-registry model (pulled); registry: a model of the data worker's registry "
                       "by id or name[:version] (distributed); cluster: a model created or pushed through the Ollama "
                       "API, pulled from the data node's /v2/ (ELDRIC_REGISTRY_URL)"})
    auto_update = fields.Boolean(load_default=False, metadata={
        "description": "re-pull when the tag points at a new digest upstream "
                       "(checked every ELDRIC_PIN_UPDATE_SECONDS); source ollama only (400 otherwise)"})
    # replicas, selector, spread: PlacementSchema's. A pin keeps N serving copies (null: every eligible
    # worker); spread needs replicas (400 naming spread, controller.pins.check_placement).


class CoverageSchema(Schema):
    present = fields.List(fields.String())
    missing = fields.List(fields.String())
    outdated = fields.List(fields.String(), metadata={"description": "auto-update pin: an older digest"})
    pulling = fields.List(fields.String())


class PinSchema(Schema):
    model = fields.String()
    workers = fields.List(fields.String(), allow_none=True, metadata={"description": "null: the whole cluster"})
    auto_update = fields.Boolean()
    source = fields.String(metadata={"description": "ollama (pulled), registry (distributed) or cluster (pulled from "
                                                    "the data node's /v2/)"})
    registry_model_id = fields.String(allow_none=True)
    created_at = fields.Float()
    upstream_digest = fields.String(allow_none=True,
                                    metadata={"description": "where the tag pointed at the last check"})
    checked_at = fields.Float(allow_none=True)
    check_error = fields.String(allow_none=True)
    coverage = fields.Nested(CoverageSchema, metadata={"description": "eligible workers by the model's status"})
    replicas = fields.Integer(allow_none=True, metadata={"description": "serving copies wanted; null: every "
                                                                        "eligible worker"})
    selector = fields.Dict(keys=fields.String(), values=fields.String(),
                           metadata={"description": "labels (and type) an eligible worker has"})
    spread = fields.String(allow_none=True, metadata={"description": "label whose values share the copies"})
    gpu = fields.Boolean(metadata={"description": "placed only where one GPU's free memory holds the model"})
    replicas_wanted = fields.Integer(metadata={"description": "replicas, or (null) how many eligible workers there "
                                                              "are"})
    replicas_serving = fields.Integer(metadata={"description": "eligible online workers serving the model now"})
    serving = fields.List(fields.String(), metadata={"description": "their ids"})


class PinListSchema(Schema):
    pins = fields.List(fields.Nested(PinSchema))
    total = fields.Integer()


@blp.route("")
class Pins(MethodView):
    @blp.response(200, PinListSchema)
    def get(self):
        """Every pin with the eligible workers that hold, lack or are pulling the model."""
        found = pins.list_pins(redis_client())
        return {"pins": found, "total": len(found)}

    @blp.arguments(PinRequestSchema)
    @blp.response(201, PinSchema)
    @blp.alt_response(200, schema=PinSchema, description="an existing pin was replaced")
    def post(self, body: dict):
        """Pin a model to the whole cluster, to listed workers or to N of them, chosen by placement
        (replaces an existing pin of the model)."""
        view, created = pins.pin_model(redis_client(), model=body["model"], workers=body.get("workers"),
                                       auto_update=body["auto_update"], source=body["source"],
                                       registry=registry_client() if body["source"] == "registry" else None,
                                       upstreams=upstreams(), replicas=body.get("replicas"),
                                       selector=body.get("selector"), spread=body.get("spread"),
                                       gpu=bool(body.get("gpu")))
        return view, 201 if created else 200


@blp.route("/<path:model>", parameters=[{"in": "path", "name": "model", "required": True,
                                           "schema": {"type": "string", "pattern": OLLAMA_NAME_PATTERN}}])
class PinByModel(MethodView):
    @blp.response(200, PinSchema)
    def get(self, model: str):
        """One pin."""
        return pins.get_pin(redis_client(), model)

    @blp.response(204)
    def delete(self, model: str):
        """Remove the pin; models already pulled stay on the workers."""
        pins.unpin_model(redis_client(), model)
