"""Inference routed to a worker that serves the model: Ollama's and OpenAI's endpoints, and ps (issue 23; being written)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("ollama_route", __name__)
