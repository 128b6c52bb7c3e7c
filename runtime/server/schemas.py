"""Request bodies of both APIs as pydantic models (unknown fields are ignored, as the real
servers do; wrong types are a 400 naming the field)."""
from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

ROLES = ("system", "developer", "user", "assistant")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- OpenAI -------------------------------------------------------------------------------------
class ContentPart(_Body):
    type: str
    text: str | None = None


class OpenAIMessage(_Body):
    role: str
    content: Union[str, list[ContentPart], None] = None
    name: str | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class JsonSchemaFormat(_Body):
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _Sampling(_Body):
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, gt=0)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    stop: Union[str, list[str], None] = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    user: str | None = None
    logprobs: bool | int | None = None


class ChatCompletionRequest(_Sampling):
    model: str
    messages: list[OpenAIMessage]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None


class CompletionRequest(_Sampling):
    model: str
    prompt: Union[str, list[str]]
    suffix: str | None = None
    echo: bool = False
    best_of: int | None = None


# -- Ollama -------------------------------------------------------------------------------------
class OllamaOptions(_Body):
    num_ctx: int | None = Field(default=None, ge=1)
    num_predict: int | None = None
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, gt=0)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | None = None


class OllamaMessage(_Body):
    role: str
    content: str | None = ""
    images: list[str] | None = None


class _OllamaGen(_Body):
    model: str
    stream: bool = True
    format: Union[Literal["json", ""], dict[str, Any], None] = None
    options: OllamaOptions | None = None
    keep_alive: Union[str, float, int, None] = None


class OllamaChatRequest(_OllamaGen):
    messages: list[OllamaMessage] = []
    tools: list[dict[str, Any]] | None = None


class OllamaGenerateRequest(_OllamaGen):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool = False
    images: list[str] | None = None


class OllamaModelRequest(_Body):
    model: str | None = None
    name: str | None = None           # the older spelling

    @property
    def which(self) -> str | None:
        return self.model or self.name


class OllamaPullRequest(OllamaModelRequest):
    stream: bool = True
    insecure: bool = False
