"""`kiln quantize IN.gguf OUT.gguf TYPE`: requantize a float GGUF with llama.cpp's mixture.

Streams row chunks of the memory-mapped input through ggml's quantizer into a temp file next to
the output (renamed at the end), keeps every metadata key of the input and rewrites
general.file_type / general.quantization_version, as llama-quantize does.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import gguf
import numpy as np

from . import ggml
from .errors import KilnError
from .gguf_file import GGUFFile
from .imatrix import Imatrix
from .imatrix import load as load_imatrix
from .pipeline import (ProgressFn, Summary, _check_output, _nbytes, assign_types, summarize,
                       write_gguf)
from .quants import Quant, parse_quant, to_f32
from .tensors import OutTensor, release_pages

Q = gguf.GGMLQuantizationType
_FLOATS = (Q.F32, Q.F16, Q.BF16)
# written by the quantizer itself, or describing a split input (llama-quantize drops those)
_SKIP = {"general.architecture", "general.file_type", "general.quantization_version",
         "general.alignment", "split.no", "split.count", "split.tensors.count"}


class GGUFRows:
    """Rows of one tensor of a memory-mapped GGUF, as float32."""

    def __init__(self, data: np.ndarray, qtype: Q, n_cols: int):
        self.qtype, self.n_cols = qtype, n_cols
        self.raw = data                      # uint8, rows x row bytes
        self.n_rows = self.raw.shape[0]
        self.dtype = {Q.F16: "F16", Q.BF16: "BF16"}.get(qtype, "F32")

    def rows(self, start: int, stop: int) -> np.ndarray:
        part = self.raw[start:stop]
        if self.qtype == Q.F32:
            return part.view(np.float32)
        if self.qtype in (Q.F16, Q.BF16):
            bf16 = self.qtype == Q.BF16
            if ggml.available():
                return ggml.half_to_f32(part.view(np.uint16), bf16=bf16)
            return to_f32(part.view(np.uint16), "BF16" if bf16 else "F16")
        return ggml.dequantize_rows(part, int(self.qtype), self.n_cols)

    def done(self, start: int, stop: int) -> None:
        release_pages(self.raw[start:stop])


class _Copy:
    """A tensor kept in its stored type: its rows' bytes as they are."""

    raw_bytes = True

    def __init__(self, data: np.ndarray, n_cols: int):
        self.raw = data                      # uint8, rows x row bytes
        self.n_rows, self.n_cols = self.raw.shape[0], n_cols

    def rows(self, start: int, stop: int) -> np.ndarray:
        return np.array(self.raw[start:stop])

    def done(self, start: int, stop: int) -> None:
        release_pages(self.raw[start:stop])


def read(path: Path) -> GGUFFile:
    if not path.is_file():
        raise KilnError(path, "no such file")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise KilnError(path, "not a GGUF file (kiln quantize takes a .gguf model; use "
                                  "kiln convert for a Hugging Face checkpoint)")
    return GGUFFile(path)


def quantize_file(src: str | os.PathLike, out: str | os.PathLike, quant: str | Quant,
                  threads: int | None = None, allow_requantize: bool = False,
                  imatrix: Imatrix | str | os.PathLike | None = None,
                  progress: ProgressFn | None = None,
                  on_plan=None) -> Summary:
    started = time.perf_counter()
    src, out = Path(src), Path(out)
    want = parse_quant(quant)
    if src.resolve() == out.resolve():
        raise KilnError(out, "is the input file; give another output name")
    if imatrix is not None and not isinstance(imatrix, Imatrix):
        imatrix = load_imatrix(imatrix)
    reader = read(src)
    fields = reader.fields
    if "general.architecture" not in fields:
        raise KilnError(src, "has no general.architecture key: not a model GGUF")
    arch = str(fields["general.architecture"])
    metadata = {k: v for k, v in fields.items() if k == "general.architecture" or k.startswith(f"{arch}.")}
    metadata = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in metadata.items()}

    tensors = [OutTensor(ti.name, ti.shape, None) for ti in reader.tensors]  # sources below
    current = [ti.qtype for ti in reader.tensors]
    assign_types(tensors, want, metadata, current, imatrix)
    if want.is_float:  # llama.cpp keeps non-quantizable tensors; kiln's float rule would not
        from . import mixture
        for t, cur in zip(tensors, current):
            if not mixture.allows_quantization(t.name, t.shape):
                t.qtype, t.note = cur, ""
    for t, cur, rt in zip(tensors, current, reader.tensors):
        if t.qtype == cur:
            t.source = _Copy(reader.data(rt), t.shape[-1])
            continue
        if cur not in _FLOATS and not allow_requantize:
            raise KilnError(src, f"tensor {t.name} is already {cur.name}: requantizing rounds the "
                                 "weights twice and loses quality; pass --allow-requantize to do it anyway")
        t.source = GGUFRows(reader.data(rt), cur, t.shape[-1])

    def header(writer: gguf.GGUFWriter) -> None:
        if "general.alignment" in fields:
            writer.add_custom_alignment(int(fields["general.alignment"]))
        for key, value in fields.items():
            if key in _SKIP or key.startswith("quantize.imatrix."):
                continue
            kind, sub = reader.types[key]
            if sub == gguf.GGUFValueType.ARRAY:
                raise KilnError(src, f"key {key}: nested arrays are not supported")
            if isinstance(value, np.ndarray):
                value = value.tolist()
            if kind == gguf.GGUFValueType.ARRAY and not value:
                raise KilnError(src, f"key {key}: empty arrays cannot be copied (gguf-py's writer "
                                     "refuses them)")
            writer.add_key_value(key, value, kind, sub_type=sub)
        writer.add_uint32("general.quantization_version", gguf.GGML_QUANT_VERSION)
        writer.add_uint32("general.file_type", want.ftype)
        if imatrix is not None:
            for key, value in imatrix.metadata().items():
                if isinstance(value, int):
                    writer.add_uint32(key, value)
                else:
                    writer.add_string(key, str(value))

    tensor_bytes = sum(_nbytes(t) for t in tensors)
    if on_plan:
        on_plan(len(tensors), tensor_bytes)
    _check_output(out, tensor_bytes)
    try:
        write_gguf(out, arch, header, tensors, threads, progress, imatrix)
    finally:
        for t in tensors:
            t.source = None
        reader.close()
    return summarize(out, tensors, want, time.perf_counter() - started)

