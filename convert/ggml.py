"""ggml's own quantizer, called through ctypes from the libggml-base that llama-cpp-python ships.

`ggml_quantize_chunk` is what llama.cpp's `llama-quantize` runs for every tensor, so bytes
written through it are llama.cpp's bytes by construction.  ctypes releases the GIL for the
duration of each call, so quantization threads run truly in parallel.

The library is found without importing llama_cpp (that would load libllama and its backends).
"""
from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import threading

import numpy as np

from .errors import KilnError

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried: list[str] = []


def _candidates() -> list[str]:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.origin:
        return []
    libdir = os.path.join(os.path.dirname(spec.origin), "lib")
    found: list[str] = []
    for pattern in ("libggml-base.so*", "libggml-base.dylib", "ggml-base.dll",
                    "libggml.so*", "libggml.dylib", "ggml.dll"):
        found += sorted(glob.glob(os.path.join(libdir, pattern)))
    return found


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    c = ctypes
    lib.ggml_quantize_chunk.restype = c.c_size_t
    lib.ggml_quantize_chunk.argtypes = [c.c_int, c.c_void_p, c.c_void_p, c.c_int64, c.c_int64,
                                        c.c_int64, c.c_void_p]
    lib.ggml_quantize_init.argtypes = [c.c_int]
    lib.ggml_quantize_init.restype = None
    lib.ggml_quantize_requires_imatrix.argtypes = [c.c_int]
    lib.ggml_quantize_requires_imatrix.restype = c.c_bool
    lib.ggml_blck_size.argtypes = [c.c_int]
    lib.ggml_blck_size.restype = c.c_int64
    lib.ggml_type_size.argtypes = [c.c_int]
    lib.ggml_type_size.restype = c.c_size_t
    lib.ggml_validate_row_data.argtypes = [c.c_int, c.c_void_p, c.c_size_t]
    lib.ggml_validate_row_data.restype = c.c_bool
    for name in ("ggml_bf16_to_fp32_row", "ggml_fp16_to_fp32_row"):
        fn = getattr(lib, name)
        fn.argtypes = [c.c_void_p, c.c_void_p, c.c_int64]
        fn.restype = None
    return lib


def library(required: bool = True) -> ctypes.CDLL | None:
    """The loaded libggml-base (None when it is missing and not `required`)."""
    global _lib
    with _lock:
        if _lib is None and not _tried:
            for path in _candidates():
                _tried.append(path)
                try:
                    lib = ctypes.CDLL(path)
                except OSError:
                    continue
                if hasattr(lib, "ggml_quantize_chunk"):
                    _lib = _declare(lib)
                    break
            if not _tried:
                _tried.append("<llama_cpp not installed>")
    if _lib is None and required:
        raise KilnError(None, "this quantization needs ggml from llama-cpp-python, which was not found "
                              f"(tried {', '.join(_tried)}); install it with: pip install llama-cpp-python")
    return _lib


def available() -> bool:
    return library(required=False) is not None


def requires_imatrix(qtype: int) -> bool:
    return bool(library().ggml_quantize_requires_imatrix(int(qtype)))


def quantize_rows(x: np.ndarray, qtype: int, imatrix: np.ndarray | None = None,
                  out: np.ndarray | None = None) -> np.ndarray:
    """float32 rows (rows, n_per_row) -> uint8 (rows, row bytes): ggml_quantize_chunk's output.

    `imatrix` (float32, n_per_row values) weights the K-quant / IQ / Q4_0.. searches exactly as
    llama-quantize passes it.  The caller guarantees n_per_row is a multiple of the block size.
    """
    lib = library()
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    q = int(qtype)
    bs, ts = int(lib.ggml_blck_size(q)), int(lib.ggml_type_size(q))
    if n % bs:
        raise ValueError(f"row length {n} is not a multiple of the block size {bs}")
    nbytes = n // bs * ts
    if out is None:
        out = np.empty((rows, nbytes), dtype=np.uint8)
    if rows == 0:
        return out
    imat = None
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        if imatrix.size != n:
            raise ValueError(f"imatrix has {imatrix.size} values for rows of {n}")
        imat = imatrix.ctypes.data
    elif lib.ggml_quantize_requires_imatrix(q):
        raise ValueError("this type needs an importance matrix")
    written = lib.ggml_quantize_chunk(q, x.ctypes.data, out.ctypes.data, 0, rows, n, imat)
    if written != rows * nbytes:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {rows * nbytes}")
    return out


def half_to_f32(raw: np.ndarray, bf16: bool) -> np.ndarray:
    """F16 / BF16 bit patterns -> float32 with ggml's converters (exact, off the GIL)."""
    lib = library()
    raw = np.ascontiguousarray(raw)
    out = np.empty(raw.shape, dtype=np.float32)
    fn = lib.ggml_bf16_to_fp32_row if bf16 else lib.ggml_fp16_to_fp32_row
    if raw.size:
        fn(raw.ctypes.data, out.ctypes.data, raw.size)
    return out


class _Traits(ctypes.Structure):
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float_ref", ctypes.c_void_p)]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_to_float: dict[int, object] = {}


def dequantize_rows(raw: np.ndarray, qtype: int, n_per_row: int) -> np.ndarray:
    """Stored rows of any ggml type (uint8, rows x row bytes) -> float32 (rows, n_per_row),
    with ggml's own to_float, as llama-quantize dequantizes before requantizing."""
    lib = library()
    q = int(qtype)
    fn = _to_float.get(q)
    if fn is None:
        lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
        lib.ggml_get_type_traits.restype = ctypes.POINTER(_Traits)
        traits = lib.ggml_get_type_traits(q).contents
        if not traits.to_float:
            raise ValueError(f"ggml cannot dequantize type {q}")
        fn = _to_float[q] = _TO_FLOAT(traits.to_float)
    raw = np.ascontiguousarray(raw)
    rows = raw.shape[0] if raw.ndim > 1 else 1
    out = np.empty((rows, n_per_row), dtype=np.float32)
    if out.size:
        fn(raw.ctypes.data, out.ctypes.data, out.size)
    return out
