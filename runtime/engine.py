"""The chat engine: load a GGUF once, then stream answers in the family's exact format.

Thread-safe (one generation at a time per model; others wait), cancellable, and it reuses the
KV cache across turns: a second turn evaluates only the tokens that are new.

A generation is two steps, which the server uses separately: `prepare` (encode and fit the
prompt; raises ContextOverflow) and `generate` (run it: per-call sampling, seed, extra stops,
grammar, a per-call cancel event). `chat` does both.
"""
from __future__ import annotations

import codecs
import ctypes
import logging
import random
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


class ContextOverflow(KilnError):
    """The current message alone (with room to answer) does not fit the context."""

    def __init__(self, path, prompt_tokens: int, reserve: int, n_ctx: int):
        self.prompt_tokens, self.reserve, self.n_ctx = prompt_tokens, reserve, n_ctx
        super().__init__(path, f"the prompt is {prompt_tokens} tokens; with {reserve} to answer "
                               f"it does not fit the {n_ctx}-token context (use --ctx or a "
                               "shorter message)")


@dataclass
class Settings:
    """Per-call sampling and length settings; None means the model's default from its GGUF."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    max_tokens: int = 512
    seed: int | None = None            # None: the next seed from the model's own generator
    stop: list[str] = field(default_factory=list)   # stop strings besides the family's
    grammar: str | None = None         # GBNF text constraining the answer (see json_grammar)


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
class Sampling:
    """Exactly what llama.cpp's sampler is built from for one generation."""

    temperature: float
    top_p: float
    top_k: int
    repeat_penalty: float
    max_tokens: int
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_p: float = 0.0
    seed: int | None = None
    stops: list[str] = field(default_factory=list)
    grammar: str | None = None
    banned: list[int] = field(default_factory=list)


# fallbacks only for a GGUF that records no sampling defaults (not made by kiln, unknown family)
FALLBACK_SAMPLING = {"temperature": 0.8, "top_p": 1.0, "top_k": 50, "repeat_penalty": 1.0,
                     "presence_penalty": 0.0, "frequency_penalty": 0.0}


def sampling_for(meta: ModelMeta, s: Settings) -> Sampling:
    """The one place sampler settings come from: the request's, else the GGUF's family
    defaults (`meta.sampling`), else FALLBACK_SAMPLING."""
    d = meta.sampling

    def pick(key):
        value = getattr(s, key)
        return value if value is not None else d.get(key, FALLBACK_SAMPLING[key])

    return Sampling(temperature=float(pick("temperature")), top_p=float(pick("top_p")),
                    top_k=int(pick("top_k")), repeat_penalty=float(pick("repeat_penalty")),
                    presence_penalty=float(pick("presence_penalty")),
                    frequency_penalty=float(pick("frequency_penalty")),
                    max_tokens=s.max_tokens, seed=s.seed,
                    stops=list(meta.stop_strings) + [x for x in s.stop if x],
                    grammar=s.grammar, banned=list(meta.banned_ids))


def json_grammar(schema: dict | None = None) -> str:
    """GBNF for any JSON object (schema None) or for JSON matching `schema`, by
    llama-cpp-python's port of llama.cpp's json-schema-to-grammar. ValueError for a schema it
    cannot express."""
    import json

    from llama_cpp import llama_grammar

    if schema is None:
        return llama_grammar.JSON_GBNF
    try:
        return llama_grammar.json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises bare Exceptions and KeyErrors
        raise ValueError(f"unsupported JSON schema ({exc})") from None


def _seed32(seed: int) -> int:
    """A uint32 seed; llama.cpp reads 0xFFFFFFFF as 'random', so that one is moved."""
    seed &= 0xFFFFFFFF
    return 0xFFFFFFFE if seed == 0xFFFFFFFF else seed


@dataclass
class Prepared:
    """A prompt encoded and fitted to the context, ready to generate from."""

    ids: list[int]
    trimmed_turns: int = 0
    text: str = ""


class Generation:
    """The text pieces of one answer (iterate it); `stats` fills in as it runs."""

    def __init__(self, pieces: Iterator[str], stats: Stats):
        self._pieces, self.stats = pieces, stats

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def close(self) -> None:
        self._pieces.close()


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
        self._seeds = random.Random(seed)  # seeds for calls that give none: a session replays
        self.last_stats = Stats()
        self.last_prompt = ""  # the prompt text of the last answer, after any trimming

    # -- public API ----------------------------------------------------------------------
    def chat(self, messages: Sequence[Message], *, stream: bool = False,
             settings: Settings | None = None, **overrides) -> str | Iterator[str]:
        """The assistant's answer to `messages`: a string, or with stream=True text pieces."""
        sampling = self._sampling(settings or Settings(), overrides)
        prepared = self.prepare(messages, max_tokens=sampling.max_tokens)
        pieces = iter(self._generate_locked(prepared, sampling, None))
        return pieces if stream else "".join(pieces)

    def prepare(self, messages: Sequence[Message] | None = None, *, prompt: str | None = None,
                max_tokens: int = 512) -> Prepared:
        """Encode `messages` in the family's format (dropping the oldest turns to fit), or a raw
        `prompt` (no template; special-token spellings in it are parsed). ContextOverflow when
        it cannot fit with room for min(max_tokens, n_ctx / 2) tokens of answer."""
        reserve = min(max_tokens, self.n_ctx // 2)
        if prompt is not None:
            ids = self.prompt.tokenizer.encode(prompt, True)
            bos = self.meta.bos_id
            if self.meta.add_bos and bos is not None and (not ids or ids[0] != bos):
                ids.insert(0, bos)
            if len(ids) + reserve > self.n_ctx:
                raise ContextOverflow(self.meta.path, len(ids), reserve, self.n_ctx)
            return Prepared(ids, 0, prompt)
        msgs = list(messages or [])
        ids, dropped = self._fit(msgs, reserve)
        if dropped:
            log.info("dropped the %d oldest turns to fit the context", dropped)
        return Prepared(ids, dropped, self.prompt.render(msgs))

    def generate(self, prepared: Prepared, settings: Settings | None = None, *,
                 cancel: threading.Event | None = None) -> Generation:
        """Run a prepared prompt; waits for any generation in progress on this model. Setting
        `cancel` (from any thread) stops this generation only, within one token."""
        sampling = self._sampling(settings or Settings(), {})
        stats = Stats()
        return Generation(self._generate_locked(prepared, sampling, cancel, stats), stats)

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
        return context_size(self.meta, asked, warn=True)

    def _sampling(self, s: Settings, overrides: dict) -> Sampling:
        if overrides:
            from dataclasses import replace

            for key in overrides:
                if not hasattr(s, key):
                    raise TypeError(f"unknown setting {key!r}")
            s = replace(s, **overrides)
        return sampling_for(self.meta, s)

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
                raise ContextOverflow(self.meta.path, len(ids), reserve, self.n_ctx)
            first = turns[0]
            # drop a whole exchange: the user turn and the answer that follows it
            end = first + 1
            if end < len(messages) - 1 and messages[end]["role"] == "assistant":
                end += 1
            del messages[first:end]
            dropped += end - first

    def _generate_locked(self, prepared: Prepared, sp: Sampling,
                         cancel: threading.Event | None, stats: Stats | None = None
                         ) -> Iterator[str]:
        with self._lock:
            self._cancel.clear()
            stats = stats if stats is not None else Stats()
            self.last_stats = stats
            stats.trimmed_turns = prepared.trimmed_turns
            self.last_prompt = prepared.text
            ids = prepared.ids
            stats.prompt_tokens = len(ids)
            cached = _common_prefix(self.llm._input_ids[: self.llm.n_tokens].tolist(), ids)
            stats.evaluated_tokens = len(ids) - min(cached, len(ids) - 1)
            seed = sp.seed if sp.seed is not None else self._seeds.getrandbits(32)
            self.llm.set_seed(_seed32(seed))
            yield from self._generate(ids, sp, stats, cancel)

    def _cancelled(self, cancel: threading.Event | None) -> bool:
        return self._cancel.is_set() or (cancel is not None and cancel.is_set())

    def _generate(self, ids: list[int], sp: Sampling, stats: Stats,
                  cancel: threading.Event | None = None) -> Iterator[str]:
        processor = None
        if sp.banned:
            from llama_cpp import LogitsProcessorList

            banned = np.array(sp.banned)

            def ban(_input_ids, scores):
                scores[banned] = -np.inf
                return scores
            processor = LogitsProcessorList([ban])
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        grammar = None
        if sp.grammar:
            from llama_cpp import LlamaGrammar

            grammar = LlamaGrammar.from_string(sp.grammar, verbose=False)
        stops = _StopScanner(sp.stops)
        started = time.perf_counter()
        first_at = None
        stats.finish_reason = "length"
        if self._cancelled(cancel):
            stats.finish_reason = "cancelled"
            return
        tokens = self.llm.generate(ids, top_k=sp.top_k, top_p=sp.top_p, min_p=sp.min_p,
                                   temp=sp.temperature, repeat_penalty=sp.repeat_penalty,
                                   presence_penalty=sp.presence_penalty,
                                   frequency_penalty=sp.frequency_penalty,
                                   logits_processor=processor, grammar=grammar)
        at_start = True
        try:
            for tok in tokens:
                if first_at is None:
                    first_at = time.perf_counter()
                    stats.prompt_seconds = first_at - started
                if self._cancelled(cancel):
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


def context_size(meta: ModelMeta, asked: int | None, warn: bool = False) -> int:
    """The context a model runs with: `asked`, else the model's own up to DEFAULT_CTX; never
    more than the model's."""
    trained = meta.context_length
    n = asked or min(trained, DEFAULT_CTX)
    if n > trained:
        if warn:
            log.warning("context %d exceeds the model's %d (sliding window or training length); "
                        "using %d", n, trained, trained)
        n = trained
    return n


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
