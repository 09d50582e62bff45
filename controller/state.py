"""Per-app handles (Redis client, Celery producer) kept in app.extensions, not in globals."""

from celery import Celery
from flask import current_app
import redis


def redis_client() -> redis.Redis:
    return current_app.extensions["eldric.redis"]


def producer() -> Celery:
    return current_app.extensions["eldric.celery"]


def stale_after() -> float:
    return float(current_app.config["STALE_WORKER_SECONDS"])
