"""Convert one checkpoint folder into one GGUF file: plan everything, then stream row chunks.

Memory stays bounded by (threads x chunk size), whatever the model size: tensors are read from
memory-mapped files a few rows at a time, quantized on a thread pool and written in order.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np

from . import __version__
from .checkpoint import Checkpoint
from .errors import KilnError
from .families import family_for
from . import mixture
from .imatrix import Imatrix
from .imatrix import load as load_imatrix
from .quants import Quant, encode, parse_quant, row_nbytes
from .tensors import OutTensor, is_mapped
from .vocab import write_vocab

log = logging.getLogger(__name__)
Q = gguf.GGMLQuantizationType

CHUNK_ELEMENTS = 1 << 22  # ~16 MB of float32 per work item


@dataclass
class Summary:
    path: Path
    n_tensors: int
    n_params: int
    tensor_bytes: int
    file_bytes: int
    seconds: float
    types: dict[str, int]                       # type name -> tensor count
    fallbacks: list[str] = field(default_factory=list)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.tensor_bytes / max(self.n_params, 1)


ProgressFn = Callable[[int, str], None]          # (bytes just written, current tensor name)


def load_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not model_dir.is_dir():
        raise KilnError(model_dir, "not a folder (expected a Hugging Face checkpoint folder)")
    if not path.is_file():
        raise KilnError(path, "not found: is this a Hugging Face model folder?")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KilnError(path, f"not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise KilnError(path, "not a JSON object")
    return config


def choose_type(t: OutTensor, want: Q, has_output: bool) -> tuple[Q, str]:
    """The GGUF type of one tensor for a float output type (F32, F16, BF16)."""
    if t.keep_f32 or len(t.shape) == 1:
        return Q.F32, ""
    return want, ""


def stored_type(t: OutTensor) -> Q:
    """The type a tensor has in kiln's own float GGUF of the checkpoint, before quantization:
    F32 for norms, biases and routers, else the checkpoint's own float type."""
    if t.keep_f32 or len(t.shape) == 1:
        return Q.F32
    src = t.source
    while getattr(src, "parts", None):
        src = src.parts[0]
    return {"F16": Q.F16, "BF16": Q.BF16}.get(str(getattr(src, "dtype", "F32")).upper(), Q.F32)


def assign_types(tensors: list[OutTensor], quant: Quant, metadata: dict,
                 current: list[Q], imatrix: Imatrix | None) -> None:
    """Give every tensor llama.cpp's type for `quant` (t.qtype, t.note), check the imatrix."""
    if quant.is_float:
        has_output = any(t.name == "output.weight" for t in tensors)
        for t in tensors:
            t.qtype, t.note = choose_type(t, quant.default, has_output)
        return
    model = mixture.Model.from_metadata(metadata)
    try:
        choices = mixture.assign([t.name for t in tensors], [t.shape for t in tensors], current,
                                 quant, model, has_imatrix=imatrix is not None)
    except mixture.MixtureError as exc:
        raise KilnError(None, str(exc)) from None
    for t, cur, c in zip(tensors, current, choices):
        t.qtype, t.note = c.qtype, c.reason
        t.quantized = c.qtype != cur
    if imatrix is not None:
        imatrix.check([(t.name, t.shape, t.quantized) for t in tensors])
    for t in tensors:
        if not (mixture.requires_imatrix(t.name, t.qtype, quant)
                and mixture.allows_quantization(t.name, t.shape)):
            continue
        if imatrix is None:
            raise KilnError(None, f"{quant.name} needs an importance matrix ({t.name} becomes "
                                  f"{t.qtype.name}); give one with --imatrix FILE")
        n_expert = t.shape[0] if len(t.shape) == 3 else 1
        if t.quantized and imatrix.weights(t.name, t.shape[-1], n_expert) is None:
            raise KilnError(imatrix.path, f"no entry for {t.name}, which {quant.name} makes "
                                          f"{t.qtype.name} (that needs an importance matrix)")


def plan(model_dir: Path, quant: str | Q | Quant, imatrix: Imatrix | None = None,
         repo_id: str | None = None, family_name: str | None = None):
    """Open the checkpoint and decide every output tensor before any output is written.
    `repo_id` (a hub download) is a family clue; `family_name` overrides the detection."""
    config = load_config(model_dir)
    family = family_for(config, model_dir, repo_id=repo_id, override=family_name)
    want = parse_quant(quant)
    ckpt = Checkpoint(model_dir)
    try:
        tensors = family.tensors(ckpt)
        metadata = {"general.architecture": family.gguf_arch, **family.hparams()}
        assign_types(tensors, want, metadata, [stored_type(t) for t in tensors], imatrix)
        vocab = family.vocab()
    except BaseException:
        ckpt.close()
        raise
    return family, ckpt, tensors, vocab, want


def convert(src: str | os.PathLike, out: str | os.PathLike, quant: str | Q | Quant = "f16",
            threads: int | None = None, progress: ProgressFn | None = None,
            on_plan: Callable[[int, int], None] | None = None,
            imatrix: Imatrix | str | os.PathLike | None = None, *, repo_id: str | None = None,
            family: str | None = None,
            on_family: Callable[[str], None] | None = None) -> Summary:
    """Convert checkpoint folder `src` into GGUF file `out`. Never leaves a partial `out`.
    `on_family` hears which family was chosen and why ("family rakutenai (vocab size 48000)")."""
    started = time.perf_counter()
    model_dir, out = Path(src), Path(out)
    if imatrix is not None and not isinstance(imatrix, Imatrix):
        imatrix = load_imatrix(imatrix)
    family, ckpt, tensors, vocab, want = plan(model_dir, quant, imatrix, repo_id, family)
    if on_family:
        on_family(family.detection.describe())
    with ckpt:
        tensor_bytes = sum(_nbytes(t) for t in tensors)
        if on_plan:
            on_plan(len(tensors), tensor_bytes)
        _check_output(out, tensor_bytes)
        extra = imatrix.metadata() if imatrix is not None else {}

        def header(writer: gguf.GGUFWriter) -> None:
            _write_metadata(writer, family, model_dir, want, vocab, repo_id)
            for key, value in extra.items():
                _put(writer, key, value)

        write_gguf(out, family.gguf_arch, header, tensors, threads, progress, imatrix)
    return summarize(out, tensors, want, time.perf_counter() - started)


def summarize(out: Path, tensors: list[OutTensor], want: Quant, seconds: float) -> Summary:
    types: dict[str, int] = {}
    for t in tensors:
        types[t.qtype.name] = types.get(t.qtype.name, 0) + 1
    return Summary(
        path=out, n_tensors=len(tensors), n_params=sum(int(np.prod(t.shape)) for t in tensors),
        tensor_bytes=sum(_nbytes(t) for t in tensors), file_bytes=out.stat().st_size,
        seconds=seconds, types=types,
        fallbacks=[f"{t.name}: {t.qtype.name} ({t.note})" for t in tensors if t.note])


def write_gguf(out: Path, arch: str, header: Callable[[gguf.GGUFWriter], None],
               tensors: list[OutTensor], threads: int | None, progress: ProgressFn | None,
               imatrix: Imatrix | None = None) -> None:
    """Write metadata (`header(writer)`), tensor infos, then stream every tensor's data into a
    temp file next to `out`, renamed at the end."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    writer = None
    try:
        writer = gguf.GGUFWriter(path=None, arch=arch)
        header(writer)
        for t in tensors:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), _nbytes(t), t.qtype)
        try:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
        except OSError as exc:
            raise _write_error(out, exc) from None
        _stream(writer, tensors, threads or os.cpu_count() or 1, progress, out, imatrix)
        try:
            writer.close()
            os.replace(tmp, out)
        except OSError as exc:
            raise _write_error(out, exc) from None
    except BaseException:
        try:
            if writer is not None:
                writer.close()
        except Exception:
            pass
        tmp.unlink(missing_ok=True)
        raise


def _nbytes(t: OutTensor) -> int:
    return int(np.prod(t.shape[:-1], dtype=np.int64)) * row_nbytes(t.shape[-1], t.qtype)


def _check_output(out: Path, needed: int) -> None:
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise KilnError(out, "is a folder; give a file name such as model.gguf")
    if not parent.is_dir():
        raise KilnError(out, f"cannot write: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise KilnError(out, f"cannot write: no permission to write in {parent}")
    free = shutil.disk_usage(parent).free
    if free < needed + (64 << 20):
        raise KilnError(out, f"not enough disk space: needs {_size(needed)}, {_size(free)} free")


def _write_error(out: Path, exc: OSError) -> KilnError:
    if exc.errno == errno.ENOSPC:
        return KilnError(out, "disk full while writing; nothing was kept")
    return KilnError(out, f"cannot write: {exc.strerror or exc}")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def _put(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value) if 0 <= value < 2**32 else writer.add_int64(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, (list, tuple)):
        writer.add_array(key, list(value))
    else:
        raise TypeError(f"cannot store {key}={value!r} in GGUF")


def _write_metadata(writer: gguf.GGUFWriter, family, model_dir: Path, want, vocab,
                    repo_id: str | None = None) -> None:
    name = (repo_id or str(family.config.get("_name_or_path") or "").rstrip("/")
            or model_dir.resolve().name)
    writer.add_name(name.split("/")[-1])
    writer.add_file_type(parse_quant(want).ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string("general.source.url", name) if "/" in name else None
    for key, value in family.hparams().items():
        _put(writer, key, value)
    vocab.chat_template = family.chat_template(vocab)
    write_vocab(writer, vocab)
    _put(writer, "kiln.version", __version__)
    for key, value in family.kiln_metadata(vocab).items():
        _put(writer, key, value)


def _stream(writer: gguf.GGUFWriter, tensors: list[OutTensor], threads: int,
            progress: ProgressFn | None, out: Path, imatrix: Imatrix | None = None) -> None:
    """Quantize row chunks on a thread pool and write them in file order.

    Chunks never cross an expert boundary of a 3-D (MoE) tensor: each expert has its own
    importance-matrix slice.
    """
    fout = writer.fout[0]
    align = writer.data_alignment

    def work(t: OutTensor, start: int, stop: int, weights: np.ndarray | None) -> np.ndarray:
        rows = t.source.rows(start, stop)
        if getattr(t.source, "raw_bytes", False):   # copied in its stored type
            data = rows
        elif t.qtype == Q.F32:
            data = rows.copy() if is_mapped(rows) else rows   # still a view on the checkpoint
        else:
            data = encode(rows, t.qtype, weights)
        t.source.done(start, stop)
        return data

    def jobs():
        for t in tensors:
            n_rows, n_cols = t.source.n_rows, t.source.n_cols
            per = int(np.prod(t.shape[1:-1])) if len(t.shape) == 3 else n_rows
            w = None
            if imatrix is not None and getattr(t, "quantized", False):
                w = imatrix.weights(t.name, n_cols, t.shape[0] if len(t.shape) == 3 else 1)
            step = max(1, CHUNK_ELEMENTS // n_cols)
            for base in range(0, n_rows, max(per, 1)):
                end = min(base + per, n_rows)
                for start in range(base, end, step):
                    yield t, start, min(start + step, end), None if w is None else w[base // per]

    def write(t: OutTensor, start: int, data: np.ndarray) -> None:
        try:
            if start == 0:
                fout.write(b"\0" * (-fout.tell() % align))
            fout.write(memoryview(np.ascontiguousarray(data)).cast("B"))
        except OSError as exc:
            raise _write_error(out, exc) from None
        if progress:
            progress(data.nbytes, t.name)

    pending: deque[tuple[OutTensor, int, Future]] = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kiln-quant") as pool:
        try:
            for t, start, stop, w in jobs():
                pending.append((t, start, pool.submit(work, t, start, stop, w)))
                while len(pending) > threads + 1:
                    done_t, done_start, fut = pending.popleft()
                    write(done_t, done_start, fut.result())
            while pending:
                done_t, done_start, fut = pending.popleft()
                write(done_t, done_start, fut.result())
        except BaseException:
            for _, _, fut in pending:
                fut.cancel()
            raise
    fout.write(b"\0" * (-fout.tell() % align))
