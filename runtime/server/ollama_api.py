"""Ollama's API: /api/version, tags, show, ps, chat, generate, pull, delete."""
from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import time
from datetime import datetime, timezone

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from convert.errors import KilnError

from .common import chat_messages, grammar_for, parse, prepare, settings, stops_of
from .config import duration_seconds
from .errors import ApiError, bad_request, model_not_found
from .jobs import run_watching
from .pool import strip_latest
from .schemas import (OllamaChatRequest, OllamaGenerateRequest, OllamaModelRequest,
                      OllamaOptions, OllamaPullRequest)
from .streams import JobStream

router = APIRouter()

# the Ollama API level served (clients compare versions to decide what to call)
OLLAMA_API_VERSION = "0.9.0"
NDJSON = "application/x-ndjson"
DONE = {"stop": "stop", "length": "length", "cancelled": "unload"}


def _iso(ts: float | None = None) -> str:
    dt = datetime.fromtimestamp(ts if ts is not None else time.time(), tz=timezone.utc)
    return dt.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _line(obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def keep_alive_seconds(value) -> float | None:
    """Ollama's keep_alive: seconds as a number, or a duration ("5m", "1h30m", "-1")."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    seconds = duration_seconds(value)
    if seconds is None:
        raise bad_request(f"keep_alive: '{value}' is not a duration (e.g. 5m, 30s, -1, 0)",
                          param="keep_alive")
    return seconds


# -- what a model is ------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _gguf_facts(path: str, mtime: float) -> dict:
    from convert.gguf_info import read_info

    from ..meta import read_meta
    from ..store import _quant_of

    info = read_info(path)
    meta = read_meta(path)
    return {"info": info, "meta": meta, "quant": _quant_of(info)}


def _facts(m) -> dict:
    return _gguf_facts(str(m.path), m.modified)


def _param_size(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}" if unit == "B" else f"{n / div:.0f}{unit}"
    return str(n)


def _details(m) -> dict:
    f = _facts(m)
    meta = f["meta"]
    fam = meta.family or meta.arch
    quant = m.entry.quant if m.entry is not None else f["quant"]
    return {"parent_model": "", "format": "gguf", "family": fam, "families": [fam],
            "parameter_size": _param_size(int(f["info"]["n_params"])),
            "quantization_level": quant.upper()}


def _digest(m) -> str:
    sha = (m.entry.manifest.get("sha256") if m.entry is not None else None)
    if sha:
        return sha
    return hashlib.sha256(f"{m.path.resolve()}:{m.size}:{m.modified}".encode()).hexdigest()


def _served_ctx(request: Request, meta) -> int:
    from ..engine import context_size

    return context_size(meta, request.app.state.config.n_ctx)


@router.get("/api/version")
async def version():
    from convert import __version__

    return {"version": OLLAMA_API_VERSION, "kiln": __version__}


@router.get("/api/tags")
async def tags(request: Request):
    out = []
    for m in request.app.state.pool.models():
        try:
            details = await asyncio.to_thread(_details, m)
        except KilnError:
            continue                     # an unreadable file is left out of the list
        out.append({"name": m.id, "model": m.id, "modified_at": _iso(m.modified),
                    "size": m.size, "digest": _digest(m), "details": details})
    return {"models": out}


@router.post("/api/show")
async def show(request: Request):
    req = await parse(request, OllamaModelRequest)
    m = request.app.state.pool.resolve(req.which)
    f = await asyncio.to_thread(_facts, m)
    meta, info = f["meta"], f["info"]
    n_ctx = _served_ctx(request, meta)
    params = [("num_ctx", n_ctx)] + [("stop", json.dumps(s, ensure_ascii=False))
                                    for s in meta.stop_strings]
    params += sorted(meta.sampling.items())
    parameters = "\n".join(f"{k:<30} {v}" for k, v in params)
    model_info = {k: v for k, v in info["metadata"].items()
                  if not isinstance(v, list) and not k.startswith("tokenizer.")}
    model_info["general.parameter_count"] = int(info["n_params"])
    model_info[f"{meta.arch}.context_length"] = n_ctx     # what this server runs it with
    model_info["kiln.trained_context_length"] = meta.context_length
    modelfile = (f"# kiln serves this GGUF with its own Jinja chat template (below)\n"
                 f"FROM {m.path}\n" + "".join(f"PARAMETER {k} {v}\n" for k, v in params))
    return {"license": "", "modelfile": modelfile, "parameters": parameters,
            "template": meta.chat_template, "details": _details(m), "model_info": model_info,
            "capabilities": ["completion"], "modified_at": _iso(m.modified)}


@router.get("/api/ps")
async def ps(request: Request):
    pool = request.app.state.pool
    out = []
    for lm in list(pool.loaded.values()):
        m = pool.resolve(lm.id)
        left = lm.expires_in(request.app.state.config.keep_alive)
        expires = _iso(time.time() + left) if left != float("inf") else "2318-01-01T00:00:00Z"
        out.append({"name": lm.id, "model": lm.id, "size": m.size, "digest": _digest(m),
                    "details": await asyncio.to_thread(_details, m), "expires_at": expires,
                    "size_vram": m.size if lm.model.gpu_layers else 0,
                    "context_length": lm.model.n_ctx})
    return {"models": out}


# -- generation ------------------------------------------------------------------------------
def _max_tokens(opts: OllamaOptions) -> int | None:
    n = opts.num_predict
    return n if n is not None and n > 0 else None   # -1, -2: until the context is full


def _grammar(fmt) -> str | None:
    if isinstance(fmt, dict):
        return grammar_for("json", fmt, "format")
    return grammar_for(fmt or None, None, "format")


async def _generate(request: Request, req, *, messages=None, prompt=None, key: str):
    """The shared body of /api/chat (key "message") and /api/generate (key "response")."""
    started = time.perf_counter()
    opts = req.options or OllamaOptions()
    keep = keep_alive_seconds(req.keep_alive)
    grammar = _grammar(req.format)
    pool = request.app.state.pool
    lm = await pool.get(req.model)
    loaded_now = lm.loaded_at >= time.time() - (time.perf_counter() - started)
    if keep is not None:
        lm.keep_alive = keep
    try:
        if messages is None and not prompt:          # load (or, keep_alive 0, unload) only
            pool.release(lm)
            reason = "unload" if keep == 0 else "load"
            body = {"model": lm.id, "created_at": _iso(), "done": True, "done_reason": reason}
            body.update({"message": {"role": "assistant", "content": ""}} if key == "message"
                        else {"response": ""})
            return JSONResponse(body)
        s = settings(opts, max_tokens=_max_tokens(opts), stop=stops_of(opts.stop, "options.stop"),
                     grammar=grammar, n_ctx=lm.model.n_ctx)
        prepared = await prepare(lm, messages=messages, prompt=prompt, max_tokens=s.max_tokens,
                                 param="messages" if key == "message" else "prompt")
        job = pool.job(lm, prepared, s)
    except BaseException:
        pool.release(lm)
        raise
    load_s = lm.load_seconds if loaded_now else 0.0

    def piece(text: str) -> dict:
        return ({"message": {"role": "assistant", "content": text}} if key == "message"
                else {"response": text})

    def final(text: str) -> dict:
        st = job.stats
        return {"model": lm.id, "created_at": _iso(), **piece(text), "done": True,
                "done_reason": DONE.get(st.finish_reason, "stop"),
                "total_duration": _ns(time.perf_counter() - started),
                "load_duration": _ns(load_s), "prompt_eval_count": st.prompt_tokens,
                "prompt_eval_duration": _ns(st.prompt_seconds), "eval_count": st.generated_tokens,
                "eval_duration": _ns(st.generate_seconds)}

    headers = {"X-Kiln-Trimmed-Messages": str(prepared.trimmed_turns)}
    if not req.stream:
        text = await run_watching(request, job)
        return JSONResponse(final(text), headers=headers)

    async def lines():
        try:
            async for text in job.pieces():
                yield _line({"model": lm.id, "created_at": _iso(), **piece(text), "done": False})
        except Exception as exc:
            yield _line({"error": exc.message if isinstance(exc, ApiError) else str(exc)})
            return
        yield _line(final(""))

    return JobStream(job, lines(), media_type=NDJSON, headers=headers)


@router.post("/api/chat")
async def chat(request: Request):
    req = await parse(request, OllamaChatRequest)
    if req.tools:
        raise bad_request("tools: tool calling is not supported by kiln serve", param="tools")
    messages = chat_messages(req.messages) if req.messages else None
    return await _generate(request, req, messages=messages, key="message")


@router.post("/api/generate")
async def generate(request: Request):
    req = await parse(request, OllamaGenerateRequest)
    if req.suffix:
        raise bad_request("suffix: fill-in-the-middle is not supported", param="suffix")
    if req.template:
        raise bad_request("template: kiln always uses the model family's own format",
                          param="template")
    if req.images:
        raise bad_request("images: this model takes text only", param="images")
    if not req.prompt:
        return await _generate(request, req, key="response")
    if req.raw:
        return await _generate(request, req, prompt=req.prompt, key="response")
    messages = ([{"role": "system", "content": req.system}] if req.system else [])
    messages.append({"role": "user", "content": req.prompt})
    return await _generate(request, req, messages=messages, key="response")


# -- the store -------------------------------------------------------------------------------
class _PullProgress:
    """store.Progress as Ollama's pull status objects, posted to the event loop."""

    def __init__(self, loop, queue: asyncio.Queue, gone):
        self.loop, self.queue, self.gone = loop, queue, gone
        self.stage, self.label, self.total, self.done = "", "", 0, 0

    def _post(self, obj) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ("status", obj))

    def start(self, stage: str, total: int, label: str) -> None:
        self.stage, self.label, self.total, self.done = stage, label, int(total), 0
        self._post({"status": f"{stage} {label}", "digest": label, "total": self.total,
                    "completed": 0})

    def advance(self, n: int, item: str = "") -> None:
        from ..store import Cancelled

        if self.gone():
            raise Cancelled(self.label, "the client disconnected; pull stopped")
        self.done = max(0, self.done + int(n))
        self._post({"status": f"{self.stage} {self.label}", "digest": self.label,
                    "total": self.total, "completed": min(self.done, self.total)})

    def finish(self) -> None:
        pass


@router.post("/api/pull")
async def pull(request: Request):
    """Pull a Hugging Face repo id (owner/name[:quant]) into the store, as `kiln pull` does."""
    from convert import hub

    from ..store import DEFAULT_QUANT, _split_quant

    req = await parse(request, OllamaPullRequest)
    spec = strip_latest(req.which or "")
    if not spec:
        raise bad_request("model: is required", param="model")
    pool = request.app.state.pool
    try:
        body, quant = _split_quant(spec)
    except KilnError as exc:
        raise bad_request(f"model: {exc.problem if hasattr(exc, 'problem') else exc}",
                          param="model") from None
    if not hub.looks_like_repo_id(body):
        try:
            pool.resolve(spec)
        except ApiError:
            raise ApiError(404, f"'{spec}' is not in the store; to pull a model give its "
                                "Hugging Face repo id (owner/name[:quant])", param="model",
                           code="model_not_found") from None
        return _pull_done(req.stream, [{"status": "success"}])
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    gone = {"flag": False}
    progress = _PullProgress(loop, queue, lambda: gone["flag"])

    def work():
        try:
            repo, revision = hub.parse_repo_spec(body)
            entry = pool.store().pull(repo, revision, quant or DEFAULT_QUANT, progress=progress,
                                      on_status=lambda msg: progress._post({"status": msg}))
            loop.call_soon_threadsafe(queue.put_nowait, ("done", entry.ref))
        except KilnError as exc:
            loop.call_soon_threadsafe(queue.put_nowait, ("error", str(exc)))
        except Exception as exc:  # reported to the client, not raised into the event loop
            loop.call_soon_threadsafe(queue.put_nowait, ("error", f"pull failed: {exc}"))

    task = loop.run_in_executor(None, work)

    async def events():
        try:
            yield {"status": "pulling manifest"}
            while True:
                kind, value = await queue.get()
                if kind == "status":
                    yield value
                elif kind == "error":
                    yield {"error": value}
                    return
                else:
                    yield {"status": f"stored as {value}"}
                    yield {"status": "success"}
                    return
        finally:
            gone["flag"] = True           # a pull whose client left stops at its next chunk

    if req.stream:
        async def lines():
            async for obj in events():
                yield _line(obj)
        return StreamingResponse(lines(), media_type=NDJSON)
    last = None
    async for obj in events():
        last = obj
    if "error" in last:
        return JSONResponse(last, status_code=500)
    return last


def _pull_done(stream: bool, objs: list[dict]):
    if not stream:
        return objs[-1]

    async def lines():
        for obj in objs:
            yield _line(obj)
    return StreamingResponse(lines(), media_type=NDJSON)


@router.delete("/api/delete")
async def delete(request: Request):
    req = await parse(request, OllamaModelRequest)
    pool = request.app.state.pool
    m = pool.resolve(req.which)
    if m.entry is None:
        raise ApiError(400, f"'{m.id}' was given on the command line as a file, not a store "
                            "entry; kiln deletes only from its store", param="model")
    if m.id in pool.loaded and not await pool.unload(m.id):
        raise ApiError(409, f"'{m.id}' is answering a request; try again when it is done",
                       param="model", code="model_busy")
    try:
        await asyncio.to_thread(pool.store().remove, m.id)
    except KilnError as exc:
        raise model_not_found(req.which or "") if "no model" in str(exc) else \
            ApiError(500, str(exc), type="server_error")
    return Response(status_code=200)
