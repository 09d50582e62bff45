"""Eldric Model Manager: shared cluster contract (queues, Redis keys, job states) and the CLI."""

__version__ = "0.1.0"
