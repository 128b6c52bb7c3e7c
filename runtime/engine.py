"""The chat engine: load a GGUF once, then stream answers in the family's exact format.

Thread-safe (one generation at a time per model; others wait), cancellable, and it reuses the
KV cache across turns: a second turn evaluates only the tokens that are new.
"""
from __future__ import annotations

import codecs
import ctypes
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from convert.errors import KilnError

from .device import choose_gpu_layers, default_threads
from .meta import ModelMeta, read_meta
from .prompt import Message, PromptBuilder, make_tokenizer, token_bytes

log = logging.getLogger(__name__)

DEFAULT_CTX = 4096
_llama_log = logging.getLogger("llama.cpp")
_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}  # ggml.h
_log_state = {"verbose": False, "level": logging.DEBUG, "callback": None}


def _route_llama_log(verbose: bool) -> None:
    """llama.cpp's own log goes to the `llama.cpp` logger; to stderr only when asked for."""
    import sys

    import llama_cpp

    _log_state["verbose"] = verbose
    if _log_state["callback"] is not None:
        return

    @llama_cpp.llama_log_callback
    def callback(level, text, _user_data):
        if level != 5:  # 5 continues the previous message
            _log_state["level"] = _LEVELS.get(level, logging.DEBUG)
        message = text.decode("utf-8", "replace")
        if _log_state["verbose"]:
            sys.stderr.write(message)
        elif message.strip():
            _llama_log.log(_log_state["level"], message.rstrip())

    _log_state["callback"] = callback  # keep a reference: C holds only the pointer
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


@dataclass
class Settings:
    """Sampling and length settings; None means the model's default from its GGUF."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repeat_penalty: float | None = None
    max_tokens: int = 512
    seed: int | None = None


@dataclass
class Stats:
    prompt_tokens: int = 0
    evaluated_tokens: int = 0       # prompt tokens actually run (the rest came from the KV cache)
    generated_tokens: int = 0
    prompt_seconds: float = 0.0
    generate_seconds: float = 0.0
    trimmed_turns: int = 0          # oldest turns dropped to fit the context
    finish_reason: str = ""         # stop | length | cancelled

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.generate_seconds if self.generate_seconds else 0.0


@dataclass
class _Sampling:
    temperature: float
    top_p: float
    top_k: int
    repeat_penalty: float
    max_tokens: int
    banned: list[int] = field(default_factory=list)


class ChatModel:
    """A loaded GGUF model to chat with.

    >>> model = ChatModel("model.gguf")
    >>> for piece in model.chat([{"role": "user", "content": "Hello"}], stream=True):
    ...     print(piece, end="")
    """

    def __init__(self, model_path: str | Path, *, n_ctx: int | None = None, device: str = "auto",
                 gpu_layers: int | None = None, threads: int | None = None, seed: int = 0,
                 verbose: bool = False):
        from llama_cpp import Llama

        _route_llama_log(verbose)
        self.meta: ModelMeta = read_meta(model_path)
        self.n_ctx = self._context_size(n_ctx)
        self.gpu_layers = choose_gpu_layers(device, gpu_layers)
        self.threads = threads or default_threads()
        try:
            self.llm = Llama(model_path=str(model_path), n_ctx=self.n_ctx, n_batch=512,
                             n_gpu_layers=self.gpu_layers, n_threads=self.threads,
                             n_threads_batch=self.threads, seed=seed,
                             verbose=verbose)
        except ValueError as exc:
            raise KilnError(model_path, f"llama.cpp could not load the model ({exc})") from None
        self.prompt = PromptBuilder(self.meta, make_tokenizer(self.meta, self.llm))
        self.eos_ids = set(self.meta.eos_ids) | ({self.meta.eos_id} if self.meta.eos_id is not None else set())
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self.last_stats = Stats()
        self.last_prompt = ""  # the prompt text of the last answer, after any trimming

    # -- public API ----------------------------------------------------------------------
    def chat(self, messages: Sequence[Message], *, stream: bool = False,
             settings: Settings | None = None, **overrides) -> str | Iterator[str]:
        """The assistant's answer to `messages`: a string, or with stream=True text pieces."""
        sampling = self._sampling(settings or Settings(), overrides)
        pieces = self._stream(list(messages), sampling)
        return pieces if stream else "".join(pieces)

    def cancel(self) -> None:
        """Stop the generation in progress (from any thread); its text so far is kept."""
        self._cancel.set()

    def reset(self) -> None:
        """Forget the KV cache (the next turn evaluates its whole prompt)."""
        with self._lock:
            self.llm.reset()

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return len(self.prompt.encode(messages))

    def close(self) -> None:
        self.llm.close()

    def __enter__(self) -> "ChatModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------
    def _context_size(self, asked: int | None) -> int:
        trained = self.meta.context_length
        n = asked or min(trained, DEFAULT_CTX)
        if n > trained:
            log.warning("context %d exceeds the model's %d (sliding window or training length); "
                        "using %d", n, trained, trained)
            n = trained
        return n

    def _sampling(self, s: Settings, overrides: dict) -> _Sampling:
        for key, value in overrides.items():
            if not hasattr(s, key):
                raise TypeError(f"unknown setting {key!r}")
            setattr(s, key, value)
        d = self.meta.sampling

        def pick(value, key, default):
            return value if value is not None else d.get(key, default)

        return _Sampling(temperature=float(pick(s.temperature, "temperature", 0.8)),
                         top_p=float(pick(s.top_p, "top_p", 1.0)),
                         top_k=int(pick(s.top_k, "top_k", 50)),
                         repeat_penalty=float(pick(s.repeat_penalty, "repeat_penalty", 1.0)),
                         max_tokens=s.max_tokens, banned=list(self.meta.banned_ids))

    def _fit(self, messages: list[Message], reserve: int) -> tuple[list[int], int]:
        """Token ids of the prompt, dropping the oldest turns (never a system message nor the
        current question) until it fits the context with `reserve` tokens to answer in."""
        dropped = 0
        while True:
            ids = self.prompt.encode(messages)
            if len(ids) + reserve <= self.n_ctx:
                return ids, dropped
            turns = [i for i, m in enumerate(messages[:-1]) if m["role"] != "system"]
            if not turns:
                raise KilnError(self.meta.path, f"the prompt is {len(ids)} tokens; with "
                                f"{reserve} to answer it does not fit the {self.n_ctx}-token "
                                "context (use --ctx or a shorter message)")
            first = turns[0]
            # drop a whole exchange: the user turn and the answer that follows it
            end = first + 1
            if end < len(messages) - 1 and messages[end]["role"] == "assistant":
                end += 1
            del messages[first:end]
            dropped += end - first

    def _stream(self, messages: list[Message], sp: _Sampling) -> Iterator[str]:
        with self._lock:
            self._cancel.clear()
            stats = self.last_stats = Stats()
            reserve = min(sp.max_tokens, self.n_ctx // 2)
            ids, stats.trimmed_turns = self._fit(messages, reserve)
            self.last_prompt = self.prompt.render(messages)
            if stats.trimmed_turns:
                log.info("dropped the %d oldest turns to fit the context", stats.trimmed_turns)
            stats.prompt_tokens = len(ids)
            cached = _common_prefix(self.llm._input_ids[: self.llm.n_tokens].tolist(), ids)
            stats.evaluated_tokens = len(ids) - min(cached, len(ids) - 1)
            yield from self._generate(ids, sp, stats)

    def _generate(self, ids: list[int], sp: _Sampling, stats: Stats) -> Iterator[str]:
        processor = None
        if sp.banned:
            from llama_cpp import LogitsProcessorList

            banned = np.array(sp.banned)

            def ban(_input_ids, scores):
                scores[banned] = -np.inf
                return scores
            processor = LogitsProcessorList([ban])
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = _StopScanner(self.meta.stop_strings)
        started = time.perf_counter()
        first_at = None
        stats.finish_reason = "length"
        tokens = self.llm.generate(ids, top_k=sp.top_k, top_p=sp.top_p, min_p=0.0,
                                   temp=sp.temperature, repeat_penalty=sp.repeat_penalty,
                                   logits_processor=processor)
        at_start = True
        try:
            for tok in tokens:
                if first_at is None:
                    first_at = time.perf_counter()
                    stats.prompt_seconds = first_at - started
                if self._cancel.is_set():
                    stats.finish_reason = "cancelled"
                    break
                if tok in self.eos_ids:
                    stats.finish_reason = "stop"
                    break
                stats.generated_tokens += 1
                text = decoder.decode(self._piece(tok))
                if at_start:
                    text = text.lstrip(" ")
                    at_start = not text
                out, hit = stops.feed(text)
                if out:
                    yield out
                if hit:
                    stats.finish_reason = "stop"
                    break
                if stats.generated_tokens >= sp.max_tokens or self.llm.n_tokens >= self.n_ctx - 1:
                    break
            else:
                stats.finish_reason = "stop"
            tail = "" if stops.hit else stops.flush()
            if tail:
                yield tail
        finally:
            tokens.close()
            end = time.perf_counter()
            stats.generate_seconds = end - (first_at or end)

    def _piece(self, token: int) -> bytes:
        return token_bytes(self.llm, token)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class _StopScanner:
    """Holds back text that might be the start of a stop string; never emits a stop string."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hit = False

    def feed(self, text: str) -> tuple[str, bool]:
        self.pending += text
        for stop in self.stops:
            at = self.pending.find(stop)
            if at >= 0:
                out, self.pending, self.hit = self.pending[:at], "", True
                return out, True
        keep = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:k]):
                    keep = max(keep, k)
                    break
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
