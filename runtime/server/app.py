"""The FastAPI application: routes of both APIs, the guard, error rendering, lifespan."""
from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from . import ollama_api, openai_api, web
from .config import ServerConfig
from .errors import ApiError, body_for
from .jobs import ClientGone
from .pool import ModelPool
from .security import Guard

log = logging.getLogger(__name__)


def create_app(config: ServerConfig, pool: ModelPool | None = None) -> FastAPI:
    pool = pool or ModelPool(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        reaper = asyncio.ensure_future(pool.reap())
        try:
            yield
        finally:
            reaper.cancel()
            await pool.close()

    app = FastAPI(title="kiln serve", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.config, app.state.pool = config, pool

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(body_for(exc, request.url.path), status_code=exc.status,
                            headers=exc.headers)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone):
        return Response(status_code=499)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"][1:])
        return await api_error(request, ApiError(400, f"{param}: {err['msg']}", param=param))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        text = {404: f"no such endpoint: {request.url.path}",
                405: f"{request.method} is not allowed on {request.url.path}"}.get(
            exc.status_code, str(exc.detail))
        return await api_error(request, ApiError(exc.status_code, text, headers=exc.headers))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        log.exception("error answering %s", request.url.path)
        return await api_error(request, ApiError(500, f"internal error: {exc}",
                                                 type="server_error"))

    app.include_router(openai_api.router)
    app.include_router(ollama_api.router)
    app.include_router(web.router)          # last: its catch-all serves the page's files
    app.add_middleware(Guard, config=config)
    return app
