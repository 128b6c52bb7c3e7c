"""A fast GGUF reader: metadata, tensor infos and memory-mapped tensor data.

gguf-py's GGUFReader builds Python objects per array element, which takes seconds for the
vocabularies and SentencePiece charsmaps of real models; here numeric arrays are read with one
numpy call and only string arrays are walked.  Values: int / float / bool / str, numeric
arrays as numpy arrays, string arrays as lists of str.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from .errors import KilnError

V = GGUFValueType
_SCALAR = {V.UINT8: "<u1", V.INT8: "<i1", V.UINT16: "<u2", V.INT16: "<i2", V.UINT32: "<u4",
           V.INT32: "<i4", V.FLOAT32: "<f4", V.BOOL: "<u1", V.UINT64: "<u8", V.INT64: "<i8",
           V.FLOAT64: "<f8"}

_STRUCT = {V.UINT8: "<B", V.INT8: "<b", V.UINT16: "<H", V.INT16: "<h", V.UINT32: "<I",
           V.INT32: "<i", V.FLOAT32: "<f", V.BOOL: "<B", V.UINT64: "<Q", V.INT64: "<q",
           V.FLOAT64: "<d"}


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]          # numpy order (ggml's ne reversed)
    qtype: GGMLQuantizationType
    offset: int                     # absolute file offset of the data
    nbytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class GGUFFile:
    """`GGUFFile(path)`: .version, .fields {key: value}, .types {key: (type, subtype)},
    .tensors [TensorInfo], .alignment; .data(t) -> uint8 rows of tensor t (memory-mapped)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise KilnError(self.path, f"cannot read: {exc}") from None
        self._buf = memoryview(self._mm)
        try:
            self._parse()
        except (struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
            raise KilnError(self.path, f"not a readable GGUF file ({exc})") from None

    # -- parsing -------------------------------------------------------------------------
    def _take(self, fmt: str):
        v = struct.unpack_from(fmt, self._buf, self._pos)
        self._pos += struct.calcsize(fmt)
        return v[0]

    def _str(self) -> str:
        n = self._take("<Q")
        if n > len(self._buf) - self._pos:
            raise ValueError("string runs past the end of the file")
        s = bytes(self._buf[self._pos:self._pos + n]).decode("utf-8")
        self._pos += n
        return s

    def _value(self, vtype: int):
        vtype = V(vtype)
        if vtype == V.STRING:
            return self._str(), (vtype, None)
        if vtype == V.ARRAY:
            sub, n = V(self._take("<I")), self._take("<Q")
            if sub == V.STRING:
                return [self._str() for _ in range(n)], (vtype, sub)
            if sub == V.ARRAY:
                return [self._value(V.ARRAY)[0] for _ in range(n)], (vtype, sub)
            dt = np.dtype(_SCALAR[sub])
            arr = np.frombuffer(self._buf, dtype=dt, count=n, offset=self._pos).copy()
            self._pos += n * dt.itemsize
            return (arr.astype(bool) if sub == V.BOOL else arr), (vtype, sub)
        v = self._take(_STRUCT[vtype])
        return (bool(v) if vtype == V.BOOL else v), (vtype, None)

    def _parse(self) -> None:
        self._pos = 0
        if bytes(self._buf[:4]) != b"GGUF":
            raise ValueError("no GGUF magic")
        self._pos = 4
        self.version = self._take("<I")
        if self.version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {self.version}")
        n_tensors, n_kv = self._take("<Q"), self._take("<Q")
        self.fields: dict[str, object] = {}
        self.types: dict[str, tuple] = {}
        for _ in range(n_kv):
            key = self._str()
            value, types = self._value(self._take("<I"))
            self.fields[key], self.types[key] = value, types
        self.alignment = int(self.fields.get("general.alignment", 32))
        infos = []
        for _ in range(n_tensors):
            name = self._str()
            ne = [self._take("<Q") for _ in range(self._take("<I"))]
            qtype, offset = GGMLQuantizationType(self._take("<I")), self._take("<Q")
            infos.append((name, ne, qtype, offset))
        start = -(-self._pos // self.alignment) * self.alignment
        self.tensors: list[TensorInfo] = []
        for name, ne, qtype, offset in infos:
            bs, ts = GGML_QUANT_SIZES[qtype]
            n = int(np.prod(ne, dtype=np.int64))
            nbytes = n // bs * ts
            if start + offset + nbytes > len(self._buf):
                raise ValueError(f"tensor {name} runs past the end of the file")
            self.tensors.append(TensorInfo(name, tuple(reversed(ne)), qtype, start + offset, nbytes))

    # -- data ----------------------------------------------------------------------------
    def data(self, t: TensorInfo) -> np.ndarray:
        """The tensor's bytes as uint8 rows (rows x row bytes), a read-only view of the file."""
        raw = np.frombuffer(self._buf, dtype=np.uint8, count=t.nbytes, offset=t.offset)
        rows = int(np.prod(t.shape[:-1], dtype=np.int64)) if len(t.shape) > 1 else 1
        return raw.reshape(rows, -1) if rows else raw.reshape(0, 0)

    def close(self) -> None:
        try:
            self._buf.release()
            self._mm.close()
        except BufferError:   # arrays still view the mapping: it goes when they do
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
