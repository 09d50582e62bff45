"""Eldric Model Manager's foundation, which imports no service: model artifacts (core), moving bytes (transfer),
the cluster contract (cluster), what the HTTP services share (web), the operator's clients (client) and the `eldric` command."""

__version__ = "0.1.0"
