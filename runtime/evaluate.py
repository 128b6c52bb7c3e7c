"""`kiln eval`: what a quantization costs, in numbers: perplexity of each GGUF and, for each one
against a base, mean and 99th-percentile KL divergence and top-1 agreement, per text section
(one per language) and over all of them.

The method is llama-perplexity's (llama.cpp tools/perplexity), so the numbers compare with it:
- each section is tokenized once, with BOS when the vocabulary adds one;
- it is cut into whole chunks of `ctx` tokens (a shorter tail is dropped), each evaluated from
  an empty cache with its first token replaced by BOS;
- only the second half of a chunk is scored: the logits at position p, ctx/2 <= p <= ctx-2,
  predict token p+1 (ctx - ctx/2 - 1 positions per chunk);
- KLD is KL(base || other) at each scored position over the whole vocabulary; top-1 agreement
  is the share of positions where both models' most likely next token is the same.

Memory stays bounded: one model is loaded at a time; the base's log-probabilities go, one
decode batch at a time, to an unnamed temporary file (np.memmap) that each other model is then
read against batch by batch; it disappears with the process, Ctrl-C included.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from convert.errors import KilnError

from .meta import read_kv

ALL = "all"             # the section name of the numbers over every section
BATCH = 512             # tokens per llama_decode: bounds the logits held at once
ROWS_ELEMENTS = 1 << 23  # float64 temporaries are cut into row blocks of about this many values
MIN_CTX = 8

_BACKEND: list[bool] = []   # llama_backend_init done (once per process)

Progress = Callable[[int, int, str], None]   # (chunks done, chunks in all, what is running)


@dataclass
class Score:
    """One model on one section (or ALL). KLD and top-1 are None for the base itself."""
    model: str
    section: str
    positions: int                  # scored tokens
    ppl: float
    kld_mean: float | None = None
    kld_p99: float | None = None
    top1: float | None = None       # fraction of positions (0..1)


@dataclass
class Section:
    """A section that was evaluated: its tokens, the chunks taken from them, scored positions."""
    name: str
    tokens: int
    chunks: int
    positions: int


@dataclass
class Evaluation:
    base: str
    others: list[str]
    ctx: int
    sections: list[Section]
    skipped: list[tuple[str, str]]          # (section, why)
    scores: list[Score]
    seconds: float = 0.0
    tokens_per_second: float = 0.0          # evaluated tokens (all models) per second
    scratch_bytes: int = 0                  # size of the base's temporary log-probabilities

    def score(self, model: str | os.PathLike, section: str = ALL) -> Score:
        name = os.fspath(Path(model))
        for s in self.scores:
            if s.model == name and s.section == section:
                return s
        raise KeyError((name, section))

    def to_dict(self) -> dict:
        """Plain JSON-ready data: models in order, each with its numbers per section and ALL."""
        models = []
        for path in [self.base, *self.others]:
            per = {s.section: {k: v for k, v in asdict(s).items() if k not in ("model", "section")}
                   for s in self.scores if s.model == path}
            models.append({"path": path, "role": "base" if path == self.base else "other",
                           "sections": per})
        return {"base": self.base, "ctx": self.ctx,
                "sections": [asdict(s) for s in self.sections],
                "skipped": [{"section": n, "reason": r} for n, r in self.skipped],
                "models": models, "seconds": round(self.seconds, 3),
                "tokens_per_second": round(self.tokens_per_second, 1)}


@dataclass
class _Model:
    path: Path
    tokens: list[str]
    n_ctx_train: int | None


@dataclass
class _Part:
    """A section to evaluate: its chunks of ctx tokens and how many tokens it had."""
    name: str
    chunks: list[np.ndarray]
    n_tokens: int


@dataclass
class _Tally:
    """Per-position numbers of one model on one section."""
    nll: list[np.ndarray] = field(default_factory=list)
    kld: list[np.ndarray] = field(default_factory=list)
    same: list[np.ndarray] = field(default_factory=list)


def evaluate(base: str | os.PathLike, others: Sequence[str | os.PathLike] = (),
             sections: Sequence[tuple[str, str]] = (), *, ctx: int = 512,
             chunks: int | None = None, threads: int | None = None, device: str = "auto",
             gpu_layers: int | None = None, progress: Progress | None = None,
             on_note: Callable[[str], None] | None = None,
             scratch_dir: str | os.PathLike | None = None) -> Evaluation:
    """Evaluate `base` (perplexity) and each of `others` against it on `sections`
    ([(name, text)], e.g. language -> text). `chunks`: at most that many chunks per section.
    Raises KilnError for input that cannot be evaluated (not a GGUF, other vocabulary, a context
    beyond the model's, too little text)."""
    from .device import choose_gpu_layers, default_threads

    if ctx < MIN_CTX:
        raise KilnError(None, f"the context must be at least {MIN_CTX} tokens (got {ctx})")
    if not sections:
        raise KilnError(None, "no text to evaluate on")
    note = on_note or (lambda _text: None)
    threads = threads or default_threads()
    gpu_layers = choose_gpu_layers(device, gpu_layers)
    models = [_read_model(p) for p in [base, *others]]
    for m in models:
        if m.n_ctx_train and ctx > m.n_ctx_train:
            raise KilnError(m.path, f"a context of {ctx} tokens is larger than the model's "
                                    f"training context ({m.n_ctx_train})")
    for m in models[1:]:
        _same_vocab(models[0], m)

    t0 = time.perf_counter()
    per_chunk = ctx - ctx // 2 - 1
    done = [0]

    def tick(name: str) -> None:
        done[0] += 1
        if progress:
            progress(done[0], total, name)

    scratch = None
    try:
        with _Runner(models[0].path, ctx, threads, gpu_layers) as runner:
            plan, skipped = _plan(runner, sections, ctx, chunks, note)
            n_chunks = sum(len(p.chunks) for p in plan)
            total = n_chunks * len(models)
            if len(models) > 1:
                scratch = _Scratch(n_chunks * per_chunk, runner.n_vocab, scratch_dir)
            tallies, top_all = _base_pass(runner, plan, scratch, tick)
        results = _scores(models[0].path, plan, tallies, with_kld=False)
        for m in models[1:]:
            with _Runner(m.path, ctx, threads, gpu_layers) as runner:
                tallies = _other_pass(runner, plan, scratch, top_all, tick)
            results += _scores(m.path, plan, tallies, with_kld=True)
    finally:
        if scratch is not None:
            scratch.close()

    seconds = time.perf_counter() - t0
    evaluated = n_chunks * (ctx - 1) * len(models)
    return Evaluation(
        base=os.fspath(models[0].path), others=[os.fspath(m.path) for m in models[1:]], ctx=ctx,
        sections=[Section(p.name, p.n_tokens, len(p.chunks), len(p.chunks) * per_chunk)
                  for p in plan],
        skipped=skipped, scores=results, seconds=seconds,
        tokens_per_second=evaluated / seconds if seconds > 0 else 0.0,
        scratch_bytes=0 if scratch is None else scratch.nbytes)


# -- the models ------------------------------------------------------------------------------
def _read_model(path: str | os.PathLike) -> _Model:
    path = Path(path)
    if not path.is_file():
        raise KilnError(path, "no such file")
    kv = read_kv(path)                              # KilnError when it is not a GGUF
    tokens = kv.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise KilnError(path, "the GGUF has no vocabulary (tokenizer.ggml.tokens)")
    arch = kv.get("general.architecture")
    n_ctx_train = kv.get(f"{arch}.context_length")
    return _Model(path, tokens.tolist(), int(n_ctx_train) if n_ctx_train else None)


def _same_vocab(base: _Model, other: _Model) -> None:
    """KL divergence compares distributions over the same tokens: refuse another vocabulary."""
    if len(other.tokens) != len(base.tokens):
        raise KilnError(other.path, f"its vocabulary has {len(other.tokens)} tokens, the base "
                                    f"{base.path.name} has {len(base.tokens)}: not comparable")
    if other.tokens != base.tokens:
        i = next(i for i, (a, b) in enumerate(zip(other.tokens, base.tokens)) if a != b)
        raise KilnError(other.path, f"its vocabulary differs from the base {base.path.name}'s "
                                    f"(token {i} is {other.tokens[i]!r} here, "
                                    f"{base.tokens[i]!r} there): not comparable")


class _Runner:
    """One model loaded through llama.cpp's C API with its default context settings (flash
    attention "auto", as llama-perplexity; llama-cpp-python's Llama can only force it on or
    off), evaluating chunks with logits asked for only at the scored positions."""

    def __init__(self, path: Path, ctx: int, threads: int, gpu_layers: int):
        import llama_cpp

        from .engine import _route_llama_log

        _route_llama_log(False)
        if not _BACKEND:
            llama_cpp.llama_backend_init()
            _BACKEND.append(True)
        self.lib, self.path, self.ctx = llama_cpp, path, ctx
        self.model = self.context = self.batch = None
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = gpu_layers
        self.model = llama_cpp.llama_model_load_from_file(os.fsencode(path), mp)
        if not self.model:
            raise KilnError(path, "llama.cpp could not load the model")
        self.n_batch = min(ctx, BATCH)
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = ctx, self.n_batch, self.n_batch, 1
        cp.n_threads = cp.n_threads_batch = threads
        self.context = llama_cpp.llama_init_from_model(self.model, cp)
        if not self.context:
            self.close()
            raise KilnError(path, f"llama.cpp could not make a context of {ctx} tokens")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.bos = (llama_cpp.llama_vocab_bos(self.vocab)
                    if llama_cpp.llama_vocab_get_add_bos(self.vocab) else None)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)

    def close(self) -> None:
        lib = self.lib
        if self.batch is not None:
            lib.llama_batch_free(self.batch)
        if self.context:
            lib.llama_free(self.context)
        if self.model:
            lib.llama_model_free(self.model)
        self.model = self.context = self.batch = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def tokenize(self, text: str) -> np.ndarray:
        """As llama-perplexity: BOS when the vocabulary adds one, special tokens as text."""
        raw = text.encode("utf-8")
        n = len(raw) + 2
        while True:
            buf = (self.lib.llama_token * n)()
            got = self.lib.llama_tokenize(self.vocab, raw, len(raw), buf, n, True, False)
            if got >= 0:
                return np.ctypeslib.as_array(buf)[:got].astype(np.int32)
            n = -got

    def pieces(self, tokens: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Evaluate one chunk of `ctx` tokens from an empty cache; yield (row, logits) per decode:
        logits [n, n_vocab] of positions first+row ... (a view, valid until the next decode).
        The last token is only a target, so it is never decoded."""
        lib, ctx_p, b = self.lib, self.context, self.batch
        first = self.ctx // 2
        lib.llama_memory_clear(lib.llama_get_memory(ctx_p), True)
        for start in range(0, self.ctx - 1, self.n_batch):
            stop = min(start + self.n_batch, self.ctx - 1)
            for i, pos in enumerate(range(start, stop)):
                b.token[i] = self.bos if (pos == 0 and self.bos is not None) else int(tokens[pos])
                b.pos[i] = pos
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = pos >= first
            b.n_tokens = stop - start
            rc = lib.llama_decode(ctx_p, b)
            if rc != 0:
                raise KilnError(self.path, f"llama.cpp could not evaluate a chunk (llama_decode "
                                           f"returned {rc})")
            n_out = stop - max(start, first)
            if n_out > 0:
                logits = np.ctypeslib.as_array(lib.llama_get_logits(ctx_p),
                                               shape=(n_out, self.n_vocab))
                yield max(start, first) - first, logits


def _base_pass(runner: _Runner, plan: list[_Part], scratch, tick):
    """The base: nll per position and section, its argmax per row, log-probs into scratch."""
    tallies = {p.name: _Tally() for p in plan}
    tops: list[np.ndarray] = []

    def visit(name, row, logits, targets):
        nll, top = _base_rows(logits, targets, scratch, row)
        tallies[name].nll.append(nll)
        tops.append(top)

    _run(runner, plan, visit, tick)
    return tallies, np.concatenate(tops)


def _other_pass(runner: _Runner, plan: list[_Part], scratch: _Scratch, top_all, tick):
    """Another model against the base's log-probs: nll, KLD, top-1 agreement per position."""
    tallies = {p.name: _Tally() for p in plan}

    def visit(name, row, logits, targets):
        nll, kld, top = _other_rows(logits, targets, scratch.read(row, row + len(logits)))
        tallies[name].nll.append(nll)
        tallies[name].kld.append(kld)
        tallies[name].same.append(top == top_all[row:row + len(logits)])

    _run(runner, plan, visit, tick)
    return tallies


def _run(runner: _Runner, plan: list[_Part], visit, tick) -> None:
    """Every chunk of `plan` through `runner`: visit(section, row, logits, targets) per decode
    batch, rows counting scored positions from the first chunk of the first section.

    The numpy work of one batch overlaps llama.cpp's decoding of the next (llama_decode drops
    the GIL): visits run in order on one worker thread, at most one batch waiting."""
    ctx = runner.ctx
    first, per_chunk, row = ctx // 2, ctx - ctx // 2 - 1, 0
    pending: list[Future] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiln-eval") as pool:
        try:
            for part in plan:
                for tokens in part.chunks:
                    for at, logits in runner.pieces(tokens):
                        targets = tokens[first + at + 1:first + at + 1 + len(logits)]
                        pending.append(pool.submit(visit, part.name, row + at, logits.copy(),
                                                   targets))
                        while len(pending) > 1:
                            pending.pop(0).result()      # raises what the visit raised
                    row += per_chunk
                    tick(runner.path.name)
            while pending:
                pending.pop(0).result()
        finally:
            for f in pending:
                f.cancel()


# -- the text --------------------------------------------------------------------------------
def _plan(runner: _Runner, sections, ctx: int, chunks: int | None, note):
    """The sections long enough for one chunk, as _Parts; the others as (name, why)."""
    plan, skipped = [], []
    names = [name for name, _ in sections]
    for name in names:
        if name == ALL or names.count(name) > 1:
            raise KilnError(None, f"section name {name!r} is " + (
                "reserved for the numbers over all sections" if name == ALL else "used twice"))
    tokenized = [(name, runner.tokenize(text)) for name, text in sections]
    total = sum(len(t) for _, t in tokenized)
    if total < 2 * ctx:
        raise KilnError(None, f"the text is {total} tokens; evaluating with a context of {ctx} "
                              f"needs at least {2 * ctx} (more text, or a smaller --ctx)")
    for name, tokens in tokenized:
        n = len(tokens) // ctx
        if chunks is not None:
            n = min(n, chunks)
        if n == 0:
            why = f"{len(tokens)} tokens, fewer than one chunk of {ctx}"
            skipped.append((name, why))
            note(f"skipping section {name!r}: {why}")
            continue
        plan.append(_Part(name, [tokens[i * ctx:(i + 1) * ctx] for i in range(n)], len(tokens)))
    if not plan:
        raise KilnError(None, f"no section is long enough for one chunk of {ctx} tokens")
    return plan, skipped


class _Scratch:
    """[rows, n_vocab] float32 rows in an unnamed temporary file, written and read with plain
    file I/O (not a memory map: the pages stay the kernel's cache, not this process's memory)."""

    def __init__(self, rows: int, n_vocab: int, where):
        where = Path(where or tempfile.gettempdir())
        self.n_vocab = n_vocab
        self.nbytes = rows * n_vocab * 4
        free = shutil.disk_usage(where).free
        if self.nbytes + (256 << 20) > free:
            raise KilnError(where, f"needs {self.nbytes / 2**30:.1f} GiB of scratch space for "
                                   f"the base's log-probabilities, {free / 2**30:.1f} GiB free "
                                   "(fewer --chunks, or TMPDIR elsewhere)")
        self.file = tempfile.TemporaryFile(dir=where)   # unlinked already: nothing to clean up

    def write(self, row: int, values: np.ndarray) -> None:
        self.file.seek(row * self.n_vocab * 4)
        self.file.write(np.ascontiguousarray(values, dtype=np.float32).data)

    def read(self, lo: int, hi: int) -> np.ndarray:
        out = np.empty((hi - lo, self.n_vocab), dtype=np.float32)
        self.file.seek(lo * self.n_vocab * 4)
        if self.file.readinto(out.data) != out.nbytes:
            raise KilnError(None, "the temporary file of log-probabilities came back short")
        return out

    def close(self) -> None:
        self.file.close()


# -- the numbers -----------------------------------------------------------------------------
def _row_blocks(n_rows: int, n_vocab: int) -> Iterator[slice]:
    step = max(1, ROWS_ELEMENTS // max(n_vocab, 1))
    for lo in range(0, n_rows, step):
        yield slice(lo, min(lo + step, n_rows))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
    return x


def _base_rows(logits, targets, scratch, row):
    """The base at some scored positions: nll per position, argmax; log-probs into scratch."""
    nll = np.empty(len(logits))
    for s in _row_blocks(len(logits), logits.shape[1]):
        lp = _log_softmax(logits[s])
        nll[s] = -lp[np.arange(len(lp)), targets[s]]
        if scratch is not None:
            scratch.write(row + s.start, lp)
    return nll, logits.argmax(axis=1)


def _other_rows(logits, targets, base_lp):
    """Another model at the same positions: nll, KL(base || other), argmax."""
    nll = np.empty(len(logits))
    kld = np.empty(len(logits))
    for s in _row_blocks(len(logits), logits.shape[1]):
        lq = _log_softmax(logits[s])
        lp = base_lp[s].astype(np.float64)
        nll[s] = -lq[np.arange(len(lq)), targets[s]]
        kld[s] = (np.exp(lp) * (lp - lq)).sum(axis=1)
    return nll, kld, logits.argmax(axis=1)


def _summary(model: str, section: str, nll, kld, same) -> Score:
    score = Score(model, section, int(nll.size), float(math.exp(nll.mean())))
    if kld is not None:
        score.kld_mean = float(kld.mean())
        score.kld_p99 = float(np.percentile(kld, 99))    # linear, as llama-perplexity's
        score.top1 = float(same.mean())
    return score


def _scores(path: Path, plan, tallies: dict[str, _Tally], with_kld: bool) -> list[Score]:
    name_of = os.fspath(path)
    out, parts = [], {"nll": [], "kld": [], "same": []}
    for part in plan:
        name = part.name
        t = tallies[name]
        nll = np.concatenate(t.nll)
        kld = np.concatenate(t.kld) if with_kld else None
        same = np.concatenate(t.same) if with_kld else None
        out.append(_summary(name_of, name, nll, kld, same))
        parts["nll"].append(nll)
        if with_kld:
            parts["kld"].append(kld)
            parts["same"].append(same)
    cat = {k: np.concatenate(v) if v else None for k, v in parts.items()}
    out.append(_summary(name_of, ALL, cat["nll"], cat["kld"], cat["same"]))
    return out

