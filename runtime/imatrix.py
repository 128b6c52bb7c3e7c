"""Importance matrices computed as llama.cpp's `llama-imatrix` computes them.

The model runs in llama.cpp (llama-cpp-python's low-level context); its scheduler calls
`cb_eval` for every graph node: first asking (ask=True) whether we want the node's data, then,
for the nodes we said yes to, once the node is computed (ask=False).  What is collected mirrors
tools/imatrix/imatrix.cpp of the vendored llama.cpp (0.3.36):

- every MUL_MAT_ID (MoE experts), whatever its weight's name: per (routing slot, token) the
  chosen expert's Σx² row gets x², and that expert's count one more;
- MUL_MAT only when src1 is F32 with ne[1] >= 16 rows and the weight's name starts with
  `blk.` (or is `output.weight` with process_output): Σx² over every row, count += rows / n_mat;
- weight names lose a backend prefix and a copy suffix: `CUDA0#blk.0.attn_k.weight#0`.

Chunks are formed as compute_imatrix() there does: the whole text tokenized once (BOS added
when the vocabulary asks for it, specials parsed only when asked), cut into chunks of `ctx`
tokens, the first token of each chunk replaced by BOS (when the vocabulary adds one); n_batch
2048, so max(1, 2048 / ctx) chunks run side by side as sequences of one batch, every token's
logits requested (that keeps the last layer's FFN on every token), KV cleared per group.
"""
from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from convert import imatrix as imatrix_file
from convert.errors import KilnError

N_BATCH = 2048            # llama-imatrix's default logical batch (common_params.n_batch)
N_UBATCH = 512            # and physical batch
GGML_TYPE_F32, GGML_TYPE_I32 = 0, 26
GGML_OBJECT_SIZE = 32     # ggml.c: struct ggml_object (offs, size, next, type, padding[4])

ProgressFn = Callable[[int, int], None]     # (chunks done, chunks in all)


class GGMLTensor(ctypes.Structure):
    """struct ggml_tensor of ggml/include/ggml.h (GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64,
    GGML_MAX_SRC 10, GGML_MAX_NAME 64).  Its size is checked against ggml_tensor_overhead()."""
    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


OP_OFFSET = GGMLTensor.op.offset


def filter_tensor_name(name: str) -> str:
    """`CUDA0#blk.0.attn_k.weight#0` -> `blk.0.attn_k.weight` (text between the first two #)."""
    p = name.find("#")
    if p < 0:
        return name
    q = name.find("#", p + 1)
    return name[p + 1:] if q < 0 else name[p + 1:q]


@dataclass
class Summary:
    path: Path
    chunks: int
    chunk_size: int
    tokens: int
    seconds: float
    entries: int
    datasets: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # weight -> ne seen by cb_eval

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


# ------------------------------------------------------------------------------ ggml access

_ggml_ready: dict[str, object] = {}


def _ggml():
    """libggml-base with the functions the collector needs, and the op numbers checked by name."""
    if not _ggml_ready:
        from convert.ggml import library

        lib = library()
        c = ctypes
        lib.ggml_op_name.argtypes = [c.c_int]
        lib.ggml_op_name.restype = c.c_char_p
        lib.ggml_tensor_overhead.argtypes = []
        lib.ggml_tensor_overhead.restype = c.c_size_t
        lib.ggml_nbytes.argtypes = [c.c_void_p]
        lib.ggml_nbytes.restype = c.c_size_t
        lib.ggml_backend_buffer_is_host.argtypes = [c.c_void_p]
        lib.ggml_backend_buffer_is_host.restype = c.c_bool
        lib.ggml_backend_tensor_get.argtypes = [c.c_void_p, c.c_void_p, c.c_size_t, c.c_size_t]
        lib.ggml_backend_tensor_get.restype = None
        if ctypes.sizeof(GGMLTensor) + GGML_OBJECT_SIZE != lib.ggml_tensor_overhead():
            raise KilnError(None, "this llama-cpp-python's ggml_tensor layout is not the one kiln "
                                  f"knows ({lib.ggml_tensor_overhead()} bytes of overhead)")
        ops = {}
        for i in range(64):             # the names table has no bound check: stop once found
            name = lib.ggml_op_name(i)
            if name in (b"MUL_MAT", b"MUL_MAT_ID"):
                ops[name.decode()] = i
            if len(ops) == 2 or name in (None, b"COUNT"):
                break
        if len(ops) != 2:
            raise KilnError(None, "ggml of this llama-cpp-python names no MUL_MAT / MUL_MAT_ID op")
        _ggml_ready.update(lib=lib, MUL_MAT=ops["MUL_MAT"], MUL_MAT_ID=ops["MUL_MAT_ID"])
    return _ggml_ready


# ------------------------------------------------------------------------------ the collector

class Collector:
    """What cb_eval sees, summed: `sums[name]` float32 (n_mat, ne0), `counts[name]` int64."""

    def __init__(self, process_output: bool = False):
        g = _ggml()
        self._lib = g["lib"]
        self._mul_mat, self._mul_mat_id = g["MUL_MAT"], g["MUL_MAT_ID"]
        self.process_output = process_output
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.error: BaseException | None = None
        self.seen: dict[str, tuple[int, ...]] = {}        # weight name -> its ne (for checks)
        self._host: dict[int, bool] = {}
        self.callback = _callback_type()(self._cb)       # keep a reference: C holds the pointer

    # -- the callback: cheap on the ask path, numpy on the data path
    def _cb(self, t: int, ask: bool, _user: int) -> bool:
        try:
            op = ctypes.c_int.from_address(t + OP_OFFSET).value
            if op != self._mul_mat and op != self._mul_mat_id:
                return False
            node = GGMLTensor.from_address(t)
            if ask:
                if op == self._mul_mat_id:
                    return True
                src1 = GGMLTensor.from_address(node.src[1])
                if src1.ne[1] < 16 or src1.type != GGML_TYPE_F32:
                    return False
                name = filter_tensor_name(GGMLTensor.from_address(node.src[0]).name.decode())
                return name.startswith("blk.") or (self.process_output and name == "output.weight")
            if op == self._mul_mat_id:
                self._collect_moe(node)
            else:
                self._collect_dense(node)
            return True
        except BaseException as exc:          # Ctrl-C lands here: stop the graph, re-raise later
            if self.error is None:
                self.error = exc
            return False

    def _array(self, t: GGMLTensor, dtype, dims: int) -> np.ndarray:
        """The tensor's data as a strided numpy view (or a host copy), axes outermost first."""
        ne = [int(t.ne[i]) for i in range(dims)][::-1]
        nb = [int(t.nb[i]) for i in range(dims)][::-1]
        extent = sum((n - 1) * s for n, s in zip(ne, nb)) + np.dtype(dtype).itemsize
        buf = t.buffer
        host = self._host.get(buf)
        if host is None:
            host = self._host[buf] = bool(self._lib.ggml_backend_buffer_is_host(buf))
        if host:
            raw = (ctypes.c_char * extent).from_address(t.data)
        else:
            nbytes = self._lib.ggml_nbytes(ctypes.addressof(t))
            raw = ctypes.create_string_buffer(nbytes)
            self._lib.ggml_backend_tensor_get(ctypes.addressof(t), raw, 0, nbytes)
        return np.ndarray(ne, dtype=dtype, buffer=raw, strides=nb)

    def _collect_dense(self, node: GGMLTensor) -> None:
        src0, src1 = GGMLTensor.from_address(node.src[0]), GGMLTensor.from_address(node.src[1])
        name = filter_tensor_name(src0.name.decode())
        ne02, ne03 = int(src0.ne[2]), int(src0.ne[3])
        n_mat = ne02 * ne03
        x = self._array(src1, np.float32, 4)                    # (ne13, ne12, ne11, ne10)
        ne13, ne12, ne11, ne0 = x.shape
        acc = self._entry(name, n_mat, ne0, n_counts=1)
        self.seen[name] = tuple(int(src0.ne[i]) for i in range(4))
        for i3 in range(ne13):
            for i2 in range(ne12):
                mat = (i3 % ne03) * ne02 + (i2 % ne02)
                _accumulate(acc[mat], x[i3, i2])
        if not np.isfinite(acc).all():
            raise KilnError(None, f"non-finite activations at {name}")
        self.counts[name] += (ne11 * ne12 * ne13) // n_mat

    def _collect_moe(self, node: GGMLTensor) -> None:
        src0, src1 = GGMLTensor.from_address(node.src[0]), GGMLTensor.from_address(node.src[1])
        ids_t = GGMLTensor.from_address(node.src[2])
        name = filter_tensor_name(src0.name.decode())
        n_as = int(src0.ne[2])
        if src1.ne[3] != 1:
            raise KilnError(None, f"{name}: MUL_MAT_ID input with more than 3 dimensions")
        x = self._array(src1, np.float32, 3)                    # (n_tokens, ne11, ne0)
        ids = self._array(ids_t, np.int32, 2)                   # (n_tokens, n_ids)
        n_tokens, ne11, ne0 = x.shape
        if ids.shape[0] != n_tokens:
            raise KilnError(None, f"{name}: {ids.shape[0]} routing rows for {n_tokens} tokens")
        acc = self._entry(name, n_as, ne0, n_counts=n_as)
        self.seen[name] = tuple(int(src0.ne[i]) for i in range(4))
        n_ids = ids.shape[1]
        # llama.cpp's order: routing slot outer, token inner; slot k reads row k % ne11
        experts = np.ascontiguousarray(ids.T).reshape(-1)
        if experts.size and (experts.min() < 0 or experts.max() >= n_as):
            raise KilnError(None, f"{name}: expert id out of range")
        rows = x.transpose(1, 0, 2)[np.arange(n_ids) % ne11].reshape(-1, ne0)
        order = np.argsort(experts, kind="stable")
        per = np.bincount(experts, minlength=n_as)
        start = 0
        for ex in np.flatnonzero(per):
            stop = start + int(per[ex])
            _accumulate(acc[ex], rows[order[start:stop]])
            if not np.isfinite(acc[ex]).all():
                raise KilnError(None, f"non-finite activations at {name}")
            start = stop
        self.counts[name] += per

    def _entry(self, name: str, n_mat: int, ne0: int, n_counts: int) -> np.ndarray:
        acc = self.sums.get(name)
        if acc is None:
            acc = self.sums[name] = np.zeros((n_mat, ne0), np.float32)
            self.counts[name] = np.zeros(n_counts, np.int64)
        elif acc.shape != (n_mat, ne0) or self.counts[name].size != n_counts:
            raise KilnError(None, f"inconsistent sizes for {name}: {acc.shape} vs {(n_mat, ne0)}")
        return acc

    def chunk_count(self, chunk_size: int) -> int:
        """llama-imatrix's m_last_chunk: the largest count of any entry, in whole chunks."""
        return max((int(c.max()) for c in self.counts.values() if c.size), default=0) // chunk_size


def _accumulate(acc: np.ndarray, x: np.ndarray) -> None:
    """acc += Σ_rows x², adding row after row in order (as llama.cpp's loop does), in float32."""
    buf = np.empty((x.shape[0] + 1, acc.shape[0]), np.float32)
    buf[0] = acc
    np.multiply(x, x, out=buf[1:])
    np.add.reduce(buf, axis=0, out=acc)


def _callback_type():
    import llama_cpp

    return llama_cpp.ggml_backend_sched_eval_callback


# ------------------------------------------------------------------------------ inputs

def read_text_files(paths: list[str | os.PathLike]) -> str:
    """The files' text, concatenated in order (a newline added after a file that does not end
    with one); then, as llama-imatrix does with -f, one trailing newline dropped."""
    parts = []
    for p in paths:
        p = Path(p)
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            raise KilnError(p, "no such text file") from None
        except IsADirectoryError:
            raise KilnError(p, "is a folder, not a text file") from None
        except OSError as exc:
            raise KilnError(p, f"cannot read ({exc.strerror or exc})") from None
        if not raw.strip():
            raise KilnError(p, "the text file is empty")
        nul = raw.find(b"\0")
        if nul >= 0:
            raise KilnError(p, f"not a text file (a NUL byte at offset {nul})")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise KilnError(p, f"not UTF-8 text (invalid byte at offset {exc.start})") from None
        parts.append(text if text.endswith("\n") else text + "\n")
    text = "".join(parts)
    return text[:-1] if text.endswith("\n") else text


def check_model(gguf_path: Path, ctx: int) -> dict:
    """Refuse what is not a model GGUF, or a context longer than the model was trained on."""
    from .meta import read_kv

    if not gguf_path.is_file():
        raise KilnError(gguf_path, "no such model file (expected a GGUF)")
    kv = read_kv(gguf_path)
    if kv.get("general.type") == "imatrix":
        raise KilnError(gguf_path, "is an importance matrix, not a model")
    arch = kv.get("general.architecture")
    if not arch:
        raise KilnError(gguf_path, "not a model GGUF (no general.architecture)")
    n_train = kv.get(f"{arch}.context_length")
    if ctx < 1:
        raise KilnError(gguf_path, f"--ctx must be at least 1, not {ctx}")
    if n_train and ctx > int(n_train):
        raise KilnError(gguf_path, f"--ctx {ctx} is larger than the context the model was trained "
                                   f"on ({int(n_train)} tokens)")
    return kv


# ------------------------------------------------------------------------------ the run

def compute_imatrix(gguf_path: str | os.PathLike, out_path: str | os.PathLike, text: str, *,
                    datasets: list[str] | None = None, ctx: int = 512, chunks: int | None = None,
                    threads: int | None = None, parse_special: bool = False,
                    process_output: bool = False, progress: ProgressFn | None = None,
                    text_source: str | os.PathLike | None = None,
                    verbose: bool = False) -> Summary:
    """Run `text` through the model in chunks of `ctx` tokens and write the importance matrix
    to `out_path` (llama.cpp's imatrix GGUF).  Nothing is written unless it completes.
    `datasets`: what the file records as imatrix.datasets (llama-imatrix: the -f path)."""
    import llama_cpp

    from .device import default_threads
    from .engine import _route_llama_log

    gguf_path, out_path = Path(gguf_path), Path(out_path)
    datasets = list(datasets or [])
    check_model(gguf_path, ctx)
    if not text.strip():
        raise KilnError(text_source, "the calibration text is empty")
    if chunks is not None and chunks < 1:
        raise KilnError(None, f"--chunks must be at least 1, not {chunks}")
    threads = threads or default_threads()
    _route_llama_log(verbose)
    llama_cpp.llama_backend_init()
    collector = Collector(process_output)

    mparams = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(os.fsencode(gguf_path), mparams)
    if not model:
        raise KilnError(gguf_path, "llama.cpp could not load this model (see kiln -v)")
    lctx = None
    batch = None
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        tokens = _tokenize(vocab, text, parse_special)
        n_chunk = len(tokens) // ctx
        if n_chunk < 1:
            raise KilnError(text_source, f"the text is {len(tokens)} tokens, shorter than one "
                                         f"chunk of --ctx {ctx}")
        if chunks is not None:
            n_chunk = min(n_chunk, chunks)
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        bos = llama_cpp.llama_vocab_bos(vocab)

        # main() of imatrix.cpp: sequences per batch, KV size, batch size
        n_seq = max(1, N_BATCH // ctx)
        n_kv = n_seq * ctx
        n_batch = min(N_BATCH, n_kv)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_kv
        cparams.n_batch = n_batch
        cparams.n_ubatch = N_UBATCH
        cparams.n_seq_max = n_seq
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.swa_full = False                     # common_params' default
        cparams.kv_unified = False
        cparams.cb_eval = collector.callback
        cparams.cb_eval_user_data = None
        lctx = llama_cpp.llama_init_from_model(model, cparams)
        if not lctx:
            raise KilnError(gguf_path, f"llama.cpp could not create a context of {n_kv} tokens")
        mem = llama_cpp.llama_get_memory(lctx)
        batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        num_batches = (ctx + n_batch - 1) // n_batch

        t0 = time.perf_counter()
        if progress:
            progress(0, n_chunk)
        for i in range(0, n_chunk, n_seq):
            start = i * ctx
            n_seq_batch = min(n_seq, n_chunk - i)
            llama_cpp.llama_memory_clear(mem, True)
            for j in range(num_batches):
                batch_start = start + j * n_batch
                size = min(start + ctx - batch_start, n_batch)
                n = 0
                for seq in range(n_seq_batch):
                    seq_start = batch_start + seq * ctx
                    ids = tokens[seq_start:seq_start + size].copy()
                    if add_bos and j == 0:
                        ids[0] = bos
                    _fill(batch, n, ids, j * n_batch, seq)
                    n += size
                batch.n_tokens = n
                rc = llama_cpp.llama_decode(lctx, batch)
                if collector.error is not None:
                    raise collector.error
                if rc != 0:
                    raise KilnError(gguf_path, f"llama_decode failed ({rc}) on chunk {i + 1}")
            if progress:
                progress(i + n_seq_batch, n_chunk)
        seconds = time.perf_counter() - t0
        _check_seen(collector, gguf_path)
        imatrix_file.save(out_path, collector.sums, collector.counts, datasets,
                          collector.chunk_count(ctx), ctx)
        return Summary(out_path, n_chunk, ctx, n_chunk * ctx, seconds, len(collector.sums),
                       list(datasets), dict(collector.seen))
    finally:
        if batch is not None:
            llama_cpp.llama_batch_free(batch)
        if lctx:
            llama_cpp.llama_free(lctx)
        llama_cpp.llama_model_free(model)


def _tokenize(vocab, text: str, parse_special: bool) -> np.ndarray:
    """common_tokenize(ctx, text, add_special=true, parse_special) of llama.cpp."""
    import llama_cpp

    raw = text.encode("utf-8")
    n_max = len(raw) + 2
    buf = (llama_cpp.llama_token * n_max)()
    n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, n_max, True, parse_special)
    if n < 0:
        n_max = -n
        buf = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, n_max, True, parse_special)
    return np.ctypeslib.as_array(buf)[:max(n, 0)].astype(np.int32)


def _fill(batch, at: int, ids: np.ndarray, pos0: int, seq: int) -> None:
    """Tokens `ids` at positions pos0.. of sequence `seq`, all with logits, from index `at`."""
    n = len(ids)
    cap = at + n
    np.ctypeslib.as_array(batch.token, shape=(cap,))[at:] = ids
    np.ctypeslib.as_array(batch.pos, shape=(cap,))[at:] = np.arange(pos0, pos0 + n, dtype=np.int32)
    np.ctypeslib.as_array(batch.n_seq_id, shape=(cap,))[at:] = 1
    np.ctypeslib.as_array(batch.logits, shape=(cap,))[at:] = 1
    for k in range(at, cap):
        batch.seq_id[k][0] = seq


def _check_seen(collector: Collector, gguf_path: Path) -> None:
    """Nothing collected means the callback saw no matmul: say so rather than write an empty file."""
    if not collector.sums:
        raise KilnError(gguf_path, "no matrix multiplication was seen while running the model "
                                   "(nothing to write)")
