"""Output tensors and where their rows come from.

Every GGUF tensor is seen as a 2-D matrix of rows (all leading dims flattened) so that the
pipeline can read, transform and quantize it a few rows at a time, never whole.
"""
from __future__ import annotations

import mmap
import threading
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .quants import to_f32


class RowSource(Protocol):
    n_rows: int
    n_cols: int

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a C-contiguous float32 array (stop - start, n_cols)."""
        ...

    def done(self, start: int, stop: int) -> None:
        """Rows [start, stop) are written: memory behind them may be given back."""
        ...


_PAGE = mmap.PAGESIZE
_map_starts: dict[int, int] = {}


def _mapping(arr: np.ndarray) -> mmap.mmap | None:
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None


def is_mapped(arr: np.ndarray) -> bool:
    """Whether `arr` views a memory-mapped file (and so must be copied before pages go)."""
    return _mapping(arr) is not None


def release_pages(arr: np.ndarray) -> None:
    """Drop the resident pages of a contiguous array that views a read-only file mapping.

    Pages of a memory-mapped checkpoint count in the process's RSS once touched; releasing
    them after use keeps peak memory independent of model size. Rereading is still correct
    (the kernel refetches from the page cache). Does nothing for arrays not backed by mmap.
    """
    base = _mapping(arr)
    if base is None or not arr.flags.c_contiguous or arr.nbytes == 0:
        return
    start = _map_starts.get(id(base))
    if start is None:
        start = _map_starts[id(base)] = np.frombuffer(base, np.uint8, count=1).ctypes.data
    offset = arr.ctypes.data - start
    lo = -(-offset // _PAGE) * _PAGE
    hi = (offset + arr.nbytes) // _PAGE * _PAGE
    if hi > lo:
        try:
            base.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        except (OSError, ValueError, AttributeError):
            pass


class StoredRows:
    """Rows of one stored tensor, optionally transposed, row-permuted and scaled."""

    def __init__(self, raw: np.ndarray, dtype: str, *, transpose: bool = False,
                 perm: np.ndarray | None = None, scale: float | None = None):
        stored = raw
        if raw.ndim == 1:
            raw = raw.reshape(1, -1)
        elif transpose:
            assert raw.ndim == 2
            raw = raw.T
        else:
            raw = raw.reshape(-1, raw.shape[-1])
        self.whole = stored if stored.flags.c_contiguous else None
        self.sliced = perm is None and not transpose
        self.raw, self.dtype, self.perm, self.scale = raw, dtype, perm, scale
        self.n_rows, self.n_cols = raw.shape
        self.rows_done = 0
        self.lock = threading.Lock()

    def rows(self, start: int, stop: int) -> np.ndarray:
        part = self.raw[self.perm[start:stop]] if self.perm is not None else self.raw[start:stop]
        out = np.ascontiguousarray(to_f32(part, self.dtype))
        if self.scale is not None:
            if not out.flags.writeable or np.shares_memory(out, self.raw):
                out = out.copy()
            out *= np.float32(self.scale)
        return out

    def done(self, start: int, stop: int) -> None:
        if self.sliced:
            release_pages(self.raw[start:stop])
        with self.lock:
            self.rows_done += stop - start
            finished = self.rows_done >= self.n_rows
        if finished and self.whole is not None:
            release_pages(self.whole)


class StackedRows:
    """Several same-shaped sources stacked along a new leading axis (MoE experts)."""

    def __init__(self, parts: list[RowSource]):
        self.parts = parts
        self.part_rows = parts[0].n_rows
        self.n_rows = self.part_rows * len(parts)
        self.n_cols = parts[0].n_cols

    def rows(self, start: int, stop: int) -> np.ndarray:
        pieces = []
        while start < stop:
            i, local = divmod(start, self.part_rows)
            take = min(stop - start, self.part_rows - local)
            pieces.append(self.parts[i].rows(local, local + take))
            start += take
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def done(self, start: int, stop: int) -> None:
        while start < stop:
            i, local = divmod(start, self.part_rows)
            take = min(stop - start, self.part_rows - local)
            self.parts[i].done(local, local + take)
            start += take


class ArrayRows:
    """A small tensor computed at conversion time (e.g. RoPE frequency factors)."""

    def __init__(self, array: np.ndarray):
        self.array = np.ascontiguousarray(array, dtype=np.float32).reshape(-1, array.shape[-1])
        self.n_rows, self.n_cols = self.array.shape

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]

    def done(self, start: int, stop: int) -> None:
        pass


@dataclass
class OutTensor:
    """One tensor of the GGUF file: its name, numpy-order shape and row source."""

    name: str
    shape: tuple[int, ...]
    source: RowSource
    keep_f32: bool = False          # norms, biases, router weights: llama.cpp wants F32
    qtype: object = field(default=None)  # chosen by the pipeline
    note: str = ""                  # why the type differs from the one asked for
    quantized: bool = False         # llama.cpp would quantize it (so an imatrix applies)


def rope_permutation(n_rows: int, n_head: int) -> np.ndarray:
    """Row order that undoes HF's q/k layout (rotate_half) into llama.cpp's interleaved RoPE."""
    return np.arange(n_rows).reshape(n_head, 2, n_rows // n_head // 2).swapaxes(1, 2).reshape(-1)
