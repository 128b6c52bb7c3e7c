"""What both APIs share: reading a body, messages, sampling settings, grammars, the prompt."""
from __future__ import annotations

import asyncio
import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..engine import ContextOverflow, Settings, json_grammar
from .errors import ApiError, bad_request, context_overflow

T = TypeVar("T", bound=BaseModel)


async def read_json(request, limit: int) -> Any:
    """The request body as JSON: 413 past `limit` bytes, 400 when it is not JSON."""
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is larger than the {limit}-byte limit",
                           code="body_too_large")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        raise bad_request("request body is empty; send a JSON object")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise bad_request("request body is not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise bad_request(f"malformed JSON in the request body: {exc.msg} (line {exc.lineno}, "
                          f"column {exc.colno})") from None


def validate(model: type[T], data: Any) -> T:
    if not isinstance(data, dict):
        raise bad_request(f"the request body must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "union["))]
        # a union's branches each add a location part; keep the field path only
        param = ".".join(p for p in loc if not re.fullmatch(r"(str|list\[.*\]|dict\[.*\]|"
                                                            r"literal\[.*\]|none|int|float|"
                                                            r"bool)", p, flags=re.I))
        msg = err["msg"]
        if err["type"] == "missing":
            msg = "is required"
        raise bad_request(f"{param or 'body'}: {msg}", param=param or None) from None


async def parse(request, model: type[T]) -> T:
    return validate(model, await read_json(request, request.app.state.config.max_body))


def stops_of(stop: str | list[str] | None, param: str = "stop") -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > 16:
        raise bad_request(f"{param}: at most 16 stop strings", param=param)
    return [s for s in stops if s]


def grammar_for(fmt: str | None, schema: dict | None, param: str) -> str | None:
    """GBNF for JSON mode: any JSON object (fmt "json") or JSON matching `schema`."""
    if schema is not None:
        try:
            return json_grammar(schema)
        except ValueError as exc:
            raise bad_request(f"{param}: {exc}", param=param) from None
    return json_grammar(None) if fmt == "json" else None


def settings(req, *, max_tokens: int | None, stop: list[str], grammar: str | None,
             n_ctx: int) -> Settings:
    """Engine settings from a request; what it leaves out comes from the model's GGUF."""
    return Settings(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                    repeat_penalty=req.repeat_penalty, presence_penalty=req.presence_penalty,
                    frequency_penalty=req.frequency_penalty, seed=req.seed, stop=stop,
                    grammar=grammar, max_tokens=max_tokens or n_ctx)


def check_max_tokens(value: int | None, n_ctx: int, param: str) -> None:
    if value is not None and value > n_ctx:
        raise ApiError(400, f"{param} {value} is more than this model's context of {n_ctx} "
                            "tokens", param=param, code="context_length_exceeded")


def chat_messages(messages: list, param: str = "messages") -> list[dict]:
    """Messages as the engine takes them: roles checked, content text only."""
    if not messages:
        raise bad_request(f"{param}: must not be empty", param=param)
    out = []
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        if role not in ("system", "user", "assistant"):
            raise bad_request(f"{param}.{i}.role: unknown role '{m.role}' (use system, user or "
                              "assistant)", param=f"{param}.{i}.role")
        content = m.content
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    raise bad_request(f"{param}.{i}.content.{j}: only text parts are supported "
                                      f"(got '{part.type}')", param=f"{param}.{i}.content")
                texts.append(part.text)
            content = "".join(texts)
        if getattr(m, "images", None):
            raise bad_request(f"{param}.{i}.images: this model takes text only",
                              param=f"{param}.{i}.images")
        out.append({"role": role, "content": content or ""})
    return out


async def prepare(lm, *, messages: list[dict] | None = None, prompt: str | None = None,
                  max_tokens: int, param: str = "messages"):
    """Encode and fit the prompt off the event loop; 400 context_length_exceeded with the
    numbers when the current message alone cannot fit."""
    try:
        return await asyncio.to_thread(lm.model.prepare, messages, prompt=prompt,
                                       max_tokens=max_tokens)
    except ContextOverflow as exc:
        raise context_overflow(exc.prompt_tokens, exc.reserve, exc.n_ctx, param) from None
