"""OpenAI's API: /v1/chat/completions, /v1/completions, /v1/models."""
from __future__ import annotations

import json
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .common import (chat_messages, check_max_tokens, grammar_for, parse, prepare, settings,
                     stops_of)
from .errors import ApiError, bad_request
from .jobs import run_watching
from .schemas import ChatCompletionRequest, CompletionRequest
from .streams import JobStream

router = APIRouter()

FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}


def _sse(data) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode("utf-8")


def _usage(stats) -> dict:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.generated_tokens,
            "total_tokens": stats.prompt_tokens + stats.generated_tokens}


def _common_checks(req) -> None:
    if req.n not in (None, 1):
        raise bad_request("n: only n=1 is supported (one answer per request)", param="n")
    if req.logprobs:
        raise bad_request("logprobs: not supported", param="logprobs")


def _model(m) -> dict:
    """A model as OpenAI lists it, plus what the chat page's picker shows (`kiln`), read from
    the store's manifest without opening the GGUF."""
    manifest = getattr(m.entry, "manifest", None) or {}
    return {"id": m.id, "object": "model", "created": int(m.modified), "owned_by": "kiln",
            "kiln": {"family": manifest.get("family"), "quant": getattr(m.entry, "quant", None),
                     "size": m.size}}


@router.get("/v1/models")
async def list_models(request: Request):
    pool = request.app.state.pool
    return {"object": "list", "data": [_model(m) for m in pool.models()]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request):
    return _model(request.app.state.pool.resolve(model_id))


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    req = await parse(request, ChatCompletionRequest)
    _common_checks(req)
    if req.tools:
        raise bad_request("tools: tool calling is not supported by kiln serve", param="tools")
    messages = chat_messages(req.messages)
    grammar = None
    if req.response_format is not None and req.response_format.type != "text":
        schema = None
        if req.response_format.type == "json_schema":
            js = req.response_format.json_schema
            if js is None or js.schema_ is None:
                raise bad_request("response_format.json_schema.schema: is required",
                                  param="response_format.json_schema.schema")
            schema = js.schema_
        grammar = grammar_for("json", schema, "response_format")
    max_tokens = req.max_completion_tokens or req.max_tokens
    pool = request.app.state.pool
    lm = await pool.get(req.model)
    try:
        n_ctx = lm.model.n_ctx
        check_max_tokens(max_tokens, n_ctx,
                         "max_completion_tokens" if req.max_completion_tokens else "max_tokens")
        s = settings(req, max_tokens=max_tokens, stop=stops_of(req.stop), grammar=grammar,
                     n_ctx=n_ctx)
        prepared = await prepare(lm, messages=messages, max_tokens=s.max_tokens)
        job = pool.job(lm, prepared, s)
    except BaseException:
        pool.release(lm)
        raise
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    headers = {"X-Kiln-Trimmed-Messages": str(prepared.trimmed_turns)}
    base = {"id": cid, "created": created, "model": lm.id, "system_fingerprint": "kiln"}

    if not req.stream:
        text = await run_watching(request, job)
        st = job.stats
        return JSONResponse({**base, "object": "chat.completion", "choices": [{
            "index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
            "finish_reason": FINISH.get(st.finish_reason, "stop")}],
            "usage": _usage(st), "kiln": {"trimmed_messages": prepared.trimmed_turns}},
            headers=headers)

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(delta: dict, finish: str | None) -> bytes:
        return _sse({**base, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    async def events():
        yield chunk({"role": "assistant", "content": ""}, None)
        try:
            async for piece in job.pieces():
                yield chunk({"content": piece}, None)
        except Exception as exc:  # the stream has started: report the error in it
            yield _sse(_error(exc))
            return
        yield chunk({}, FINISH.get(job.stats.finish_reason, "stop"))
        if include_usage:  # `kiln`: the engine's own speed, shown by the chat page
            yield _sse({**base, "object": "chat.completion.chunk", "choices": [],
                        "usage": _usage(job.stats), "kiln": {
                            "tokens_per_second": round(job.stats.tokens_per_second, 2)}})
        yield b"data: [DONE]\n\n"

    return JobStream(job, events(), media_type="text/event-stream", headers=headers)


def _error(exc: Exception) -> dict:
    if isinstance(exc, ApiError):
        return exc.openai()
    return {"error": {"message": str(exc), "type": "server_error", "param": None,
                      "code": None}}


@router.post("/v1/completions")
async def completions(request: Request):
    """A raw prompt, no chat template: the text is continued as it stands (special-token
    spellings in it are parsed, as a raw prompt's author means them)."""
    req = await parse(request, CompletionRequest)
    _common_checks(req)
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise bad_request("prompt: one prompt per request", param="prompt")
        prompt = prompt[0]
    if req.suffix:
        raise bad_request("suffix: fill-in-the-middle is not supported", param="suffix")
    if req.echo:
        raise bad_request("echo: not supported", param="echo")
    if req.best_of not in (None, 1):
        raise bad_request("best_of: only 1 is supported", param="best_of")
    max_tokens = req.max_tokens or 16          # OpenAI's default for this endpoint
    pool = request.app.state.pool
    lm = await pool.get(req.model)
    try:
        check_max_tokens(req.max_tokens, lm.model.n_ctx, "max_tokens")
        s = settings(req, max_tokens=max_tokens, stop=stops_of(req.stop), grammar=None,
                     n_ctx=lm.model.n_ctx)
        prepared = await prepare(lm, prompt=prompt, max_tokens=max_tokens, param="prompt")
        job = pool.job(lm, prepared, s)
    except BaseException:
        pool.release(lm)
        raise
    base = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
            "created": int(time.time()), "model": lm.id, "system_fingerprint": "kiln"}

    def choice(text: str, finish: str | None) -> dict:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}

    if not req.stream:
        text = await run_watching(request, job)
        return {**base, "choices": [choice(text, FINISH.get(job.stats.finish_reason, "stop"))],
                "usage": _usage(job.stats)}

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    async def events():
        try:
            async for piece in job.pieces():
                yield _sse({**base, "choices": [choice(piece, None)]})
        except Exception as exc:
            yield _sse(_error(exc))
            return
        yield _sse({**base, "choices": [choice("", FINISH.get(job.stats.finish_reason,
                                                               "stop"))]})
        if include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(job.stats)})
        yield b"data: [DONE]\n\n"

    return JobStream(job, events(), media_type="text/event-stream")
