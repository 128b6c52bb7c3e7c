"""The guard in front of every route (plain ASGI, so streams pass through untouched):
Host check against DNS rebinding, CORS for local apps only, the API key, the body limit.
Refusals are JSON in the shape of the API the path belongs to."""
from __future__ import annotations

import hmac
import json
import ipaddress
import logging
from urllib.parse import urlsplit

from .errors import ApiError, body_for

log = logging.getLogger(__name__)

LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
APP_SCHEMES = {"app", "tauri", "vscode-webview", "file"}   # desktop shells and editors
EXPOSE = "Retry-After, X-Kiln-Trimmed-Messages"


def _is_local_name(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in LOCAL_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_of(netloc: str) -> str:
    return urlsplit(f"//{netloc}").hostname or ""


def is_loopback_bind(host: str) -> bool:
    """Listening on loopback only (0.0.0.0 and :: are every interface)."""
    return host.strip("[]") not in ("0.0.0.0", "::", "") and _is_local_name(host)


class Guard:
    def __init__(self, app, config):
        self.app, self.config = app, config
        self.extra = {o.rstrip("/") for o in config.cors}
        self.loopback = is_loopback_bind(config.host)

    # -- decisions ------------------------------------------------------------------------
    def origin_allowed(self, origin: str, host: str) -> bool:
        if "*" in self.extra or origin.rstrip("/") in self.extra:
            return True
        if origin == "null":               # sandboxed frames of any site send this
            return False
        parts = urlsplit(origin)
        if parts.scheme in APP_SCHEMES:
            return True
        if parts.scheme in ("http", "https"):
            if _is_local_name(parts.hostname or ""):
                return True
            return bool(host) and parts.netloc.lower() == host.lower()   # the page we serve
        return False

    def needs_key(self, path: str) -> bool:
        return bool(self.config.api_key) and (path in ("/v1", "/api")
                                              or path.startswith(("/v1/", "/api/")))

    def key_ok(self, auth: str) -> bool:
        scheme, _, token = auth.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.config.api_key.encode())

    # -- ASGI -----------------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        path, method = scope["path"], scope["method"]
        host = headers.get("host", "")
        origin = headers.get("origin")
        if self.loopback and host and not _is_local_name(_host_of(host)):
            return await self._refuse(send, path, ApiError(
                403, f"Host '{host}' is not this machine; kiln serve on a loopback address "
                     "answers only requests for localhost", code="host_not_allowed"))
        cors = {}
        if origin is not None:
            if not self.origin_allowed(origin, host):
                return await self._refuse(send, path, ApiError(
                    403, f"origin '{origin}' is not allowed; start the server with "
                         f"--cors {origin} to allow it", code="origin_not_allowed"))
            cors = {"access-control-allow-origin": origin, "vary": "Origin",
                    "access-control-expose-headers": EXPOSE}
        if method == "OPTIONS" and origin is not None and \
                "access-control-request-method" in headers:
            asked = headers.get("access-control-request-headers", "")
            pre = {**cors, "access-control-allow-methods": "GET, HEAD, POST, DELETE, OPTIONS",
                   "access-control-allow-headers": asked or "Authorization, Content-Type",
                   "access-control-max-age": "600"}
            return await self._send(send, 204, b"", pre, "text/plain")
        if self.needs_key(path) and not self.key_ok(headers.get("authorization", "")):
            missing = "authorization" not in headers
            err = ApiError(401, "missing API key: send 'Authorization: Bearer KEY'" if missing
                           else "wrong API key", type="authentication_error",
                           code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
            return await self._refuse(send, path, err, cors)
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.config.max_body:
            return await self._refuse(send, path, ApiError(
                413, f"request body is larger than the {self.config.max_body}-byte limit",
                code="body_too_large"), cors)

        if not cors:
            return await self.app(scope, receive, send)

        async def send_with_cors(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [
                    (k.encode(), v.encode()) for k, v in cors.items()]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _refuse(self, send, path: str, err: ApiError, extra: dict | None = None):
        body = json.dumps(body_for(err, path)).encode()
        await self._send(send, err.status, body, {**(extra or {}), **{
            k.lower(): v for k, v in err.headers.items()}}, "application/json")

    @staticmethod
    async def _send(send, status: int, body: bytes, headers: dict, ctype: str):
        hs = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
        hs += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": hs})
        await send({"type": "http.response.body", "body": body})
