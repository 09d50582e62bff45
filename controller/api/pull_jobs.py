"""/api/v1/models/pull and /api/v1/models/pull-jobs: cluster-wide pulls and their progress."""

from flask.views import MethodView
from eldric.web.blueprints import Blueprint

from controller import pull_jobs
from eldric.cluster.jobs import reads as jobs
from eldric.cluster.jobs.store import cancel_job
from eldric.core.request_errors import ConflictError, NotFoundError
from eldric.cluster.jobs import state as jobstate
from controller.schemas import (JobListSchema, JobQuerySchema, JobSchema, PullRequestSchema, transfer_caps)
from controller.target_placement import PlacementRequest
from controller.state import job_limits, producer, redis_client, offline_grace, stale_after

blp = Blueprint("pull_jobs", __name__, url_prefix="/api/v1/models", description="Cluster-wide model pulls")


@blp.route("/pull")
class Pull(MethodView):
    @blp.arguments(PullRequestSchema)
    @blp.response(202, JobSchema)
    @blp.alt_response(404, description="an unknown worker, or no such model upstream (the message lists the tags "
                                       "there and the lowercase name); nothing is queued")
    @blp.alt_response(502, description="the registry the agents pull from (ELDRIC_OLLAMA_REGISTRY) cannot be asked; "
                                       "nothing is queued")
    @blp.alt_response(409, description="replicas/selector: no worker can take the model (each worker's reason: "
                                       "offline, a label, no room); nothing is queued")
    def post(self, body: dict):
        """Pull a model from the Ollama registry to every inference and cloud worker (or the listed ones).

        The model's manifest is asked for once, where the agents will fetch it, before anything is queued.
        With `replicas`, `selector` or `spread` the cluster chooses the workers: holders first, then those
        with room for the manifest's size after ELDRIC_PLACEMENT_RESERVE_BYTES, most free disk, fewest models
        (each part's `placement_reason`); when fewer than `replicas` fit, the others are parts `skipped`
        with their reason and the job ends completed_with_skipped."""
        client = redis_client()
        job_id = pull_jobs.start_pull(client, producer(), model=body["model"], workers=body.get("workers"),
                                  limits=job_limits(body.get("deadline_seconds")), caps=transfer_caps(body),
                                  placement=PlacementRequest.from_body(body))
        return jobs.get_job(client, job_id, stale_after=stale_after(), offline_grace=offline_grace())


@blp.route("/pull-jobs")
class PullJobs(MethodView):
    @blp.arguments(JobQuerySchema, location="query")
    @blp.response(200, JobListSchema)
    def get(self, query: dict):
        """Jobs newest first, active and finished."""
        found, total = jobs.list_jobs(redis_client(), stale_after=stale_after(), offline_grace=offline_grace(), limit=query["limit"],
                                      offset=query["offset"], state=query.get("state"), kind=query.get("kind"))
        return {"jobs": found, "total": total, "limit": query["limit"], "offset": query["offset"]}


@blp.route("/pull-jobs/<job_id>")
class PullJob(MethodView):
    @blp.response(200, JobSchema)
    def get(self, job_id: str):
        """One job with every worker's progress."""
        job = jobs.get_job(redis_client(), job_id, stale_after=stale_after(), offline_grace=offline_grace())
        if job is None:
            raise NotFoundError(f"no job {job_id!r}")
        return job


@blp.route("/pull-jobs/<job_id>/cancel")
class CancelJob(MethodView):
    @blp.response(200, JobSchema)
    @blp.alt_response(404, description="no such job")
    @blp.alt_response(409, description="the job already ended")
    def post(self, job_id: str):
        """Stop a job: its unfinished workers end `cancelled`, stop within seconds and drop their partial data."""
        client = redis_client()
        job = jobs.get_job(client, job_id, stale_after=stale_after(), offline_grace=offline_grace())
        if job is None:
            raise NotFoundError(f"no job {job_id!r}")
        if job["state"] in jobstate.JOB_FINAL:
            raise ConflictError(f"job {job_id} already ended ({job['state']})")
        cancel_job(client, job_id)
        return jobs.get_job(client, job_id, stale_after=stale_after(), offline_grace=offline_grace())
