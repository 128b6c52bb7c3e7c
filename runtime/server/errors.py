"""Errors in each API's own shape: OpenAI `{"error": {message, type, param, code}}`, Ollama
`{"error": "message"}`. Routes raise ApiError; app.py renders it by the path's API."""
from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}

    def openai(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def ollama(self) -> dict[str, Any]:
        return {"error": self.message}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def model_not_found(name: str) -> ApiError:
    return ApiError(404, f"model '{name}' not found; see GET /v1/models (or /api/tags) for the "
                         "models this server has", type="invalid_request_error", param="model",
                    code="model_not_found")


def queue_full(waiting: int, retry_after: int = 2) -> ApiError:
    return ApiError(503, f"server busy: {waiting} requests are already waiting for this model; "
                         "retry later", type="server_error", code="queue_full",
                    headers={"Retry-After": str(retry_after)})


def context_overflow(prompt_tokens: int, reserve: int, n_ctx: int,
                     param: str = "messages") -> ApiError:
    return ApiError(400, f"this model's context is {n_ctx} tokens; the prompt is {prompt_tokens} "
                         f"tokens and {reserve} are kept to answer in (shorten the message or "
                         "start the server with a larger --ctx)", param=param,
                    code="context_length_exceeded")


def api_of(path: str) -> str:
    """Which API's error shape a path gets."""
    return "ollama" if path == "/api" or path.startswith("/api/") else "openai"


def body_for(error: ApiError, path: str) -> dict[str, Any]:
    return error.ollama() if api_of(path) == "ollama" else error.openai()
