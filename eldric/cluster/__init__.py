"""The cluster contract every service shares through Redis and Celery: queue and task names, Redis keys and connections,
task dispatch, jobs (jobs/) and workers, pins and the scheduled maintenance the agents host, the settings services share."""
