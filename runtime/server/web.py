"""`/` for both kinds of visitor: browsers get the chat page (runtime/web/), API clients that
probe `/` (Ollama's clients do) get Ollama's "Ollama is running"; `/health` for monitors."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response

from .errors import ApiError

router = APIRouter()
PROBE_TEXT = "Ollama is running"


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


@router.api_route("/", methods=["GET", "HEAD"])
async def root(request: Request):
    index = Path(request.app.state.config.web_dir) / "index.html"
    if _wants_html(request) and index.is_file():
        return FileResponse(index, media_type="text/html")
    if request.method == "HEAD":
        return Response(headers={"content-type": "text/plain; charset=utf-8"})
    return PlainTextResponse(PROBE_TEXT)


@router.get("/health")
async def health(request: Request):
    pool = request.app.state.pool
    return {"status": "ok", "loaded": sorted(pool.loaded)}


@router.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
                  include_in_schema=False)
async def static(path: str, request: Request):
    """The page's other files; nothing outside runtime/web/ is ever served."""
    if request.method not in ("GET", "HEAD") or path.startswith(("v1/", "api/")) or \
            path in ("v1", "api"):
        raise ApiError(404, f"no such endpoint: {request.method} /{path}", code="not_found")
    root = Path(request.app.state.config.web_dir).resolve()
    target = (root / path).resolve()
    if root in target.parents and target.is_file():
        return FileResponse(target)
    raise ApiError(404, f"not found: /{path}", code="not_found")
