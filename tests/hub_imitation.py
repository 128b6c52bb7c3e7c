"""A small Hugging Face Hub imitation on loopback, for tests of the real huggingface-hub client.

It serves what huggingface-hub 2.4 calls, with the same status codes and headers:

- `GET /api/models/{repo}[/revision/{rev}]` (`?blobs=True`: sizes and LFS info of the files)
- `GET /api/models/{repo}/tree/{rev}[/{path}]` (used by snapshot_download)
- `HEAD|GET /{repo}/resolve/{rev}/{path}`: small files answer 200 with `ETag` (git blob sha1),
  `X-Repo-Commit`, `Content-Length`; LFS files (weights, tokenizer.model) answer 302 to a second
  "CDN" origin with `X-Linked-Etag` (sha256), `X-Linked-Size`, `X-Repo-Commit`, as the Hub does
- `GET /repos/{repo}/{sha256}` on the CDN origin, `Range: bytes=N-` answered 206 + `Content-Range`
- errors with `X-Error-Code` / `X-Error-Message`: `RepoNotFound` (401 without a token, 404 with
  one), `GatedRepo` (401 without a token, 403 with a token not on the list), `RevisionNotFound`,
  `EntryNotFound`

Switches: `gated=True, tokens={...}` per repo; `drop_once.add(filename)` cuts the connection half
way through that file's next full download (to exercise resume). Every request is logged.
"""
from __future__ import annotations

import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".model", ".msgpack", ".gguf", ".h5",
                ".onnx", ".ckpt")


def isolate_hf_env(monkeypatch, hf_home: Path) -> None:
    """The real huggingface-hub client, pointed nowhere yet: its cache in `hf_home`, no token,
    online, loopback not proxied, and no daily "agent harness" list fetched at import time.
    Set HF_ENDPOINT to a HubImitation's endpoint afterwards."""
    import huggingface_hub.constants as hfc
    from huggingface_hub.utils import _detect_agent

    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hfc, "HF_TOKEN_PATH", str(hf_home / "token"))
    monkeypatch.setattr(_detect_agent, "_registry", {"standardEnvVars": [], "harnesses": {}})


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, bytes]
    gated: bool = False
    tokens: set[str] = field(default_factory=set)

    def __post_init__(self):
        h = hashlib.sha1(self.repo_id.encode())
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + hashlib.sha256(self.files[name]).digest())
        self.commit = h.hexdigest()

    def is_lfs(self, name: str) -> bool:
        return name.endswith(LFS_SUFFIXES)

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self.files[name]).hexdigest()

    def pointer(self, name: str) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256(name)}\n"
                f"size {len(self.files[name])}\n").encode()

    def blob_id(self, name: str) -> str:
        data = self.pointer(name) if self.is_lfs(name) else self.files[name]
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Request:
    origin: str                                          # "hub" or "cdn"
    method: str
    path: str
    repo: str | None
    file: str | None
    range: str | None
    auth: str | None
    status: int


def files_from_dir(folder: Path) -> dict[str, bytes]:
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class HubImitation:
    def __init__(self):
        self.repos: dict[str, HubRepo] = {}
        self.log: list[Request] = []
        self.drop_once: set[str] = set()
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.endpoint = self.cdn = ""

    # -- content ---------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes] | Path, *, gated: bool = False,
                 tokens: set[str] | None = None) -> HubRepo:
        if not isinstance(files, dict):
            files = files_from_dir(files)
        repo = HubRepo(repo_id, dict(files), gated, set(tokens or ()))
        self.repos[repo_id.lower()] = repo
        return repo

    # -- queries for tests -----------------------------------------------------------------------
    def fetched(self, repo: str | None = None) -> list[str]:
        """File names whose bytes were sent (GET 200/206), in order, repeats included."""
        with self._lock:
            return [r.file for r in self.log if r.method == "GET" and r.status in (200, 206)
                    and r.file is not None and (repo is None or r.repo == repo)]

    def requests(self, **match) -> list[Request]:
        with self._lock:
            return [r for r in self.log if all(getattr(r, k) == v for k, v in match.items())]

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    # -- serving ---------------------------------------------------------------------------------
    def start(self) -> "HubImitation":
        for origin in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, origin))
            server.daemon_threads = True
            t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                 name=f"hub-imitation-{origin}", daemon=True)
            t.start()
            self._servers.append(server)
            self._threads.append(t)
        self.endpoint = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        """Stop listening: afterwards every connection to the endpoint is refused."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> "HubImitation":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _record(self, req: Request) -> None:
        with self._lock:
            self.log.append(req)


def _handler(hub: HubImitation, origin: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "hub-imitation/1.0"

        def log_message(self, *args) -> None:          # keep test output clean
            pass

        # -- plumbing ----------------------------------------------------------------------------
        def _token(self) -> str | None:
            auth = self.headers.get("Authorization") or ""
            return auth[7:].strip() if auth.lower().startswith("bearer ") else None

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
                  repo: str | None = None, file: str | None = None) -> None:
            hub._record(Request(origin, self.command, self.path, repo, file,
                                self.headers.get("Range"), self._token(), status))
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, str(v))
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str, repo: str | None = None,
                   extra: dict | None = None) -> None:
            body = json.dumps({"error": message}).encode()
            headers = {"Content-Type": "application/json; charset=utf-8", "X-Error-Code": code,
                       "X-Error-Message": message, **(extra or {})}
            self._send(status, body, headers, repo=repo)

        def _repo(self, repo_id: str) -> HubRepo | None:
            repo = hub.repos.get(repo_id.lower())
            if repo is None:
                # the Hub answers 401 to anonymous requests for a repo it cannot show
                self._error(404 if self._token() else 401, "RepoNotFound", "Repository not found",
                            repo=repo_id)
            return repo

        def _commit(self, repo: HubRepo, rev: str) -> str | None:
            if rev in ("main", repo.commit):
                return repo.commit
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", repo=repo.repo_id)
            return None

        # -- verbs -------------------------------------------------------------------------------
        def do_HEAD(self) -> None:
            self._route()

        def do_GET(self) -> None:
            self._route()

        def _route(self) -> None:
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.split("/") if p]
            query = parse_qs(url.query)
            if origin == "cdn":
                return self._cdn(parts)
            if len(parts) >= 4 and parts[:2] == ["api", "models"]:
                return self._api(parts[2:], query)
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            self._error(404, "NotFound", "Not found")

        def _api(self, parts: list[str], query: dict) -> None:
            repo = self._repo(f"{parts[0]}/{parts[1]}")
            if repo is None:
                return
            rest = parts[2:]
            if rest and rest[0] == "tree":
                commit = self._commit(repo, rest[1] if len(rest) > 1 else "main")
                if commit:
                    self._tree(repo, "/".join(rest[2:]), query)
                return
            rev = rest[1] if len(rest) >= 2 and rest[0] == "revision" else "main"
            commit = self._commit(repo, rev)
            if commit is None:
                return
            blobs = (query.get("blobs") or ["false"])[0].lower() == "true"
            siblings = []
            for name in sorted(repo.files):
                s: dict = {"rfilename": name}
                if blobs:
                    s["blobId"] = repo.blob_id(name)
                    s["size"] = len(repo.files[name])
                    if repo.is_lfs(name):
                        s["lfs"] = {"sha256": repo.sha256(name), "size": len(repo.files[name]),
                                    "pointerSize": len(repo.pointer(name))}
                siblings.append(s)
            info = {"_id": commit[:24], "id": repo.repo_id, "modelId": repo.repo_id,
                    "author": repo.repo_id.split("/")[0], "sha": commit, "private": False,
                    "gated": "manual" if repo.gated else False, "disabled": False,
                    "lastModified": "2025-01-01T00:00:00.000Z",
                    "createdAt": "2025-01-01T00:00:00.000Z", "library_name": "transformers",
                    "tags": ["transformers", "safetensors"], "downloads": 0, "likes": 0,
                    "siblings": siblings}
            self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"},
                       repo=repo.repo_id)

        def _tree(self, repo: HubRepo, path: str, query: dict) -> None:
            recursive = (query.get("recursive") or ["false"])[0].lower() == "true"
            prefix = f"{path}/" if path else ""
            out, dirs = [], set()
            for name in sorted(repo.files):
                if not name.startswith(prefix):
                    continue
                rel = name[len(prefix):]
                if "/" in rel:
                    top = prefix + rel.split("/")[0]
                    if top not in dirs:
                        dirs.add(top)
                        out.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": top})
                    if not recursive:
                        continue
                item = {"type": "file", "oid": repo.blob_id(name), "size": len(repo.files[name]),
                        "path": name}
                if repo.is_lfs(name):
                    item["lfs"] = {"oid": repo.sha256(name), "size": len(repo.files[name]),
                                   "pointerSize": len(repo.pointer(name))}
                out.append(item)
            self._send(200, json.dumps(out).encode(), {"Content-Type": "application/json"},
                       repo=repo.repo_id)

        def _resolve(self, repo_id: str, rev: str, name: str) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            if repo.gated and self._token() not in repo.tokens:
                if self._token():
                    self._error(403, "GatedRepo", f"Access to model {repo.repo_id} is restricted "
                                "and you are not in the authorized list. Visit "
                                f"{hub.endpoint}/{repo.repo_id} to ask for access.",
                                repo=repo.repo_id)
                else:
                    self._error(401, "GatedRepo", f"Access to model {repo.repo_id} is restricted. "
                                "You must have access to it and be authenticated to access it. "
                                "Please log in.", repo=repo.repo_id)
                return
            commit = self._commit(repo, rev)
            if commit is None:
                return
            if name not in repo.files:
                self._error(404, "EntryNotFound", f"{name} does not exist on \"{rev}\"",
                            repo=repo.repo_id, extra={"X-Repo-Commit": commit})
                return
            data = repo.files[name]
            common = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes",
                      "Content-Security-Policy": "default-src 'none'; sandbox"}
            if repo.is_lfs(name):
                location = (f"{hub.cdn}/repos/{repo.repo_id}/{repo.sha256(name)}"
                            f"?name={quote(name)}&X-Amz-Expires=3600")
                self._send(302, b"", {**common, "Location": location,
                                      "ETag": f'"{repo.blob_id(name)}"',
                                      "X-Linked-Etag": f'"{repo.sha256(name)}"',
                                      "X-Linked-Size": len(data)},
                           repo=repo.repo_id, file=name)
                return
            self._body(repo, name, data, {**common, "ETag": f'"{repo.blob_id(name)}"',
                                          "Content-Type": "text/plain; charset=utf-8"})

        def _cdn(self, parts: list[str]) -> None:
            """`/repos/{owner}/{name}/{sha256}`: a signed-URL CDN, no auth needed."""
            if len(parts) == 4 and parts[0] == "repos":
                repo = hub.repos.get(f"{parts[1]}/{parts[2]}".lower())
                for name, data in (repo.files.items() if repo else ()):
                    if repo.is_lfs(name) and repo.sha256(name) == parts[3]:
                        return self._body(repo, name, data, {
                            "ETag": f'"{parts[3]}"', "Accept-Ranges": "bytes",
                            "Content-Type": "application/octet-stream",
                            "Content-Disposition": f'inline; filename="{name}";'})
            self._error(404, "NotFound", "No such blob")

        def _body(self, repo: HubRepo, name: str, data: bytes, headers: dict) -> None:
            rng = self.headers.get("Range")
            status, start, end = 200, 0, len(data)
            if rng and rng.startswith("bytes="):
                a, _, b = rng[6:].partition("-")
                start = int(a or 0)
                end = int(b) + 1 if b else len(data)
                if start >= len(data):
                    self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"},
                               repo=repo.repo_id, file=name)
                    return
                status = 206
                headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{len(data)}"}
            body = data[start:end]
            if (self.command == "GET" and status == 200 and name in hub.drop_once):
                hub.drop_once.discard(name)
                self._drop(repo, name, body, headers)
                return
            self._send(status, body, headers, repo=repo.repo_id, file=name)

        def _drop(self, repo: HubRepo, name: str, body: bytes, headers: dict) -> None:
            """Promise the whole file, send half of it, cut the connection."""
            hub._record(Request(origin, "GET", self.path, repo.repo_id, f"{name} (dropped)",
                                self.headers.get("Range"), self._token(), 200))
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, str(v))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.close_connection = True

    return Handler
