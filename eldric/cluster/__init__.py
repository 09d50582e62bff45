"""The cluster contract: queue and task names, Redis keys, job records and states, Celery settings."""
