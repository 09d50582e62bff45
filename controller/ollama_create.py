"""Ollama's model-building endpoints on the controller: blobs, create, push (issue 23; being written)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("ollama_create", __name__)
