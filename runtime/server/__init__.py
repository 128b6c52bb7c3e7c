"""`kiln serve`: OpenAI- and Ollama-compatible HTTP APIs on one port, over kiln's chat engine.

Modules: config (ServerConfig), errors (both APIs' error shapes), schemas (pydantic request
models), gate (the per-model FIFO queue), pool (loading, keep-alive, LRU), jobs (a generation
on a worker thread, cancellable), openai_api and ollama_api (the routes), security (host check,
CORS, API key, body limit), web (the browser page and the `/` probe), app (assembly), cli.
"""
from __future__ import annotations

from .config import ServerConfig

__all__ = ["ServerConfig", "create_app"]


def create_app(config: ServerConfig):
    from .app import create_app as _create

    return _create(config)
