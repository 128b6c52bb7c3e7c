"""Output tensor types: float conversions and ggml's reference block quantizers, in numpy.

`quantize` produces exactly the bytes ggml itself writes (`ggml_quantize_chunk`, which runs
`quantize_row_q8_0_ref` / `quantize_row_q4_0_ref` and the scalar fp16/bf16 converters).  It is
written for throughput: data is processed in cache-sized slices of blocks, every step is one
vectorised numpy call writing into a reused buffer, and nothing goes through float64.

The rules of ggml's reference code reproduced here (all arithmetic in float32, as in C):

Q8_0, per block of 32:  amax = max |x|;  d = amax / 127;  id = d ? 1/d : 0;
    q = (int8) roundf(x * id)  (roundf: halves away from zero);  d stored as fp16.
Q4_0, per block of 32:  max = the signed value of largest magnitude, the first one on ties,
    +0.0 when all are zero;  d = max / -8  (so -0.0 for an all-zero block);  id = d ? 1/d : 0;
    q = min(15, (int8)(x * id + 8.5f))  (truncation);  byte j = q[j] | q[j + 16] << 4.
    Where x * id is not finite (1/d overflowed because every |x| < ~4e-37, or the block holds
    inf) the quant is 0, which is what x86 makes of ggml's float -> int8 conversion.
F16: round to nearest even; a NaN becomes ggml's canonical 0x7e00 plus its sign.
BF16: (u + 0x7fff + ((u >> 16) & 1)) >> 16 (round to nearest even); a NaN keeps its top 16 bits
    with the quiet bit 0x0040 forced on.

Not reproduced: NaN inside a Q8_0/Q4_0 block (ggml's `MAX` macro then keeps whatever follows
the last NaN; here the block gets d = NaN and all-zero quants).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from convert.errors import KilnError

__all__ = [
    "Quant",
    "QUANTS",
    "QUANT_NAMES",
    "FILE_TYPES",
    "parse_quant",
    "quant_help",
    "bf16_to_f32",
    "to_f32",
    "block_size",
    "type_size",
    "row_nbytes",
    "quantize",
    "encode",
]

QT = GGMLQuantizationType
FT = LlamaFileType


@dataclass(frozen=True)
class Quant:
    """One `--quant` choice: a llama.cpp file type (ftype) and the type most tensors get."""

    name: str                   # as llama.cpp spells it: "Q4_K_M"
    ftype: int                  # general.file_type (llama_ftype)
    default: GGMLQuantizationType
    bpw: float                  # bits per weight (of Llama-3-8B for the mixtures)

    @property
    def is_float(self) -> bool:
        return self.default in (QT.F32, QT.F16, QT.BF16)

    def __str__(self) -> str:
        return self.name


# llama-quantize's sizes for Llama-3-8B (8.03e9 weights), in GiB, turned into bits per weight;
# the plain types give their exact size.
def _bpw(gib: float) -> float:
    return round(gib * 2**30 * 8 / 8.03e9, 2)


_TABLE = [
    # name, ftype, default tensor type, bits/weight
    ("F32", FT.ALL_F32, QT.F32, 32.0),
    ("F16", FT.MOSTLY_F16, QT.F16, 16.0),
    ("BF16", FT.MOSTLY_BF16, QT.BF16, 16.0),
    ("Q8_0", FT.MOSTLY_Q8_0, QT.Q8_0, 8.5),
    ("Q6_K", FT.MOSTLY_Q6_K, QT.Q6_K, _bpw(6.14)),
    ("Q5_K_M", FT.MOSTLY_Q5_K_M, QT.Q5_K, _bpw(5.33)),
    ("Q5_K_S", FT.MOSTLY_Q5_K_S, QT.Q5_K, _bpw(5.21)),
    ("Q5_1", FT.MOSTLY_Q5_1, QT.Q5_1, _bpw(5.65)),
    ("Q5_0", FT.MOSTLY_Q5_0, QT.Q5_0, _bpw(5.21)),
    ("Q4_K_M", FT.MOSTLY_Q4_K_M, QT.Q4_K, _bpw(4.58)),
    ("Q4_K_S", FT.MOSTLY_Q4_K_S, QT.Q4_K, _bpw(4.37)),
    ("Q4_1", FT.MOSTLY_Q4_1, QT.Q4_1, _bpw(4.78)),
    ("Q4_0", FT.MOSTLY_Q4_0, QT.Q4_0, _bpw(4.34)),
    ("IQ4_NL", FT.MOSTLY_IQ4_NL, QT.IQ4_NL, 4.5),
    ("IQ4_XS", FT.MOSTLY_IQ4_XS, QT.IQ4_XS, 4.25),
    ("Q3_K_L", FT.MOSTLY_Q3_K_L, QT.Q3_K, _bpw(4.03)),
    ("Q3_K_M", FT.MOSTLY_Q3_K_M, QT.Q3_K, _bpw(3.74)),
    ("Q3_K_S", FT.MOSTLY_Q3_K_S, QT.Q3_K, _bpw(3.41)),
    ("Q2_K", FT.MOSTLY_Q2_K, QT.Q2_K, _bpw(2.96)),
    # these need an importance matrix (--imatrix) for some or all of their tensors
    ("Q2_K_S", FT.MOSTLY_Q2_K_S, QT.Q2_K, _bpw(2.96)),
    ("IQ3_M", FT.MOSTLY_IQ3_M, QT.IQ3_S, 3.66),
    ("IQ3_S", FT.MOSTLY_IQ3_S, QT.IQ3_S, 3.44),
    ("IQ3_XS", FT.MOSTLY_IQ3_XS, QT.IQ3_S, 3.3),
    ("IQ3_XXS", FT.MOSTLY_IQ3_XXS, QT.IQ3_XXS, 3.06),
    ("IQ2_M", FT.MOSTLY_IQ2_M, QT.IQ2_S, 2.7),
    ("IQ2_S", FT.MOSTLY_IQ2_S, QT.IQ2_XS, 2.5),
    ("IQ2_XS", FT.MOSTLY_IQ2_XS, QT.IQ2_XS, 2.31),
    ("IQ2_XXS", FT.MOSTLY_IQ2_XXS, QT.IQ2_XXS, 2.06),
    ("IQ1_M", FT.MOSTLY_IQ1_M, QT.IQ1_M, 1.75),
    ("IQ1_S", FT.MOSTLY_IQ1_S, QT.IQ1_S, 1.56),
]

QUANTS: dict[str, Quant] = {n.lower(): Quant(n, int(f), d, b) for n, f, d, b in _TABLE}
QUANT_NAMES = QUANTS                             # lower-case names, for help texts
ALIASES = {"q4_k": "q4_k_m", "q5_k": "q5_k_m", "q3_k": "q3_k_m"}   # as llama-quantize has them

# The types numpy's converters below write too, and the file type a file of only that type has.
FILE_TYPES: dict[GGMLQuantizationType, int] = {
    q.default: q.ftype for q in QUANTS.values()
    if q.name in ("F32", "F16", "BF16", "Q8_0", "Q4_0")}

# Blocks per slice: 4096 blocks = 128 Ki floats = 512 KiB per float32 buffer, so the few
# buffers in use at once stay in a core's L2 cache.
_SLICE_BLOCKS = 4096

_F32 = np.float32
_HALF_BELOW = np.nextafter(_F32(0.5), _F32(0))  # 0.49999997f
_EIGHT_HALF = _F32(8.5)
_NUMPY_TYPES = tuple(FILE_TYPES)
_GGML_MIN = 4096   # below this many values numpy's converters are as fast as a ctypes call


def parse_quant(name) -> Quant:
    """'Q4_K_M', 'q8_0', ... -> the Quant; anything else is a KilnError listing the choices."""
    if isinstance(name, Quant):
        return name
    if isinstance(name, GGMLQuantizationType):
        name = name.name
    key = str(name).strip().lower()
    quant = QUANTS.get(ALIASES.get(key, key))
    if quant is None:
        raise KilnError(None, f"unknown quantization type {name!r} (choose from: {', '.join(QUANTS)})")
    return quant


def quant_help() -> str:
    """One line per type with its size per weight, for --help."""
    return ", ".join(f"{q.name.lower()} ({q.bpw:g})" for q in QUANTS.values())


def _check_qtype(qtype) -> GGMLQuantizationType:
    try:
        qtype = QT(qtype)
    except ValueError:
        raise ValueError(f"unsupported output type {qtype!r}") from None
    if qtype not in GGML_QUANT_SIZES:
        raise ValueError(f"unsupported output type {qtype.name}")
    return qtype


def block_size(qtype) -> int:
    """Elements per block: 1 for the float types, 32 for Q8_0 / Q4_0, 256 for the K-quants."""
    return GGML_QUANT_SIZES[_check_qtype(qtype)][0]


def type_size(qtype) -> int:
    """Bytes per block."""
    return GGML_QUANT_SIZES[_check_qtype(qtype)][1]


def row_nbytes(ncols: int, qtype) -> int:
    """Bytes that one row of `ncols` elements takes in the GGUF file."""
    bs, ts = GGML_QUANT_SIZES[_check_qtype(qtype)]
    ncols = int(ncols)
    if ncols < 0 or ncols % bs:
        raise ValueError(f"row length {ncols} is not a multiple of the {QT(qtype).name} block size {bs}")
    return ncols // bs * ts


def encode(x: np.ndarray, qtype, imatrix: np.ndarray | None = None) -> np.ndarray:
    """float32 rows -> their GGUF bytes, through ggml's own quantizer when it is available.

    ggml (ctypes, off the GIL) gives the same bytes as `quantize` for the types both have
    (tests/test_quants.py checks it) and is the only path for K-quants, IQ types and imatrix
    weights.  F32 comes back as float32 rows, every other type as uint8 rows.
    """
    from . import ggml

    qtype = _check_qtype(qtype)
    if qtype == QT.F32:
        return np.ascontiguousarray(x, dtype=np.float32)
    if ggml.available() or qtype not in _NUMPY_TYPES or imatrix is not None:
        x = np.asarray(x)
        return ggml.quantize_rows(x.reshape(-1, x.shape[-1]), int(qtype), imatrix)
    out = quantize(x, qtype)
    return out.view(np.uint8).reshape(out.shape[0], -1) if out.ndim == 2 else out


# --------------------------------------------------------------------------- to float32


def bf16_to_f32(u16) -> np.ndarray:
    """bfloat16 bit patterns (an integer array or scalar, normally uint16) -> float32, exactly."""
    a = np.asarray(u16)
    if a.dtype.kind not in "iu":
        raise ValueError(f"bfloat16 data must come as 16-bit integer bit patterns, not {a.dtype}")
    if a.dtype.itemsize != 2:
        a = a.astype(np.uint16)
    elif a.dtype != np.uint16:
        a = a.view(np.uint16)
    out = np.empty(a.shape, dtype=np.uint32)
    np.left_shift(a, np.uint32(16), out=out, dtype=np.uint32)
    return out.view(np.float32)


def to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Stored tensor data (safetensors dtype spelling) -> a new, writable, C-contiguous float32 array.

    `raw` is never modified (it may be a read-only memory map).  BF16 data arrives as uint16.
    """
    raw = np.asarray(raw)
    kind = str(dtype).upper()
    if kind in ("BF16", "F16") and raw.dtype.itemsize == 2 and raw.size >= _GGML_MIN:
        from . import ggml   # ggml's converters: the same exact result, without the GIL

        if ggml.available():
            return ggml.half_to_f32(raw.view(np.uint16), bf16=kind == "BF16")
    if kind == "BF16":
        return bf16_to_f32(raw)
    if kind == "F16":
        src = raw if raw.dtype == np.float16 else raw.view(np.float16)
    elif kind == "F32":
        src = raw if raw.dtype == np.float32 else raw.view(np.float32)
    elif kind == "F64":
        src = raw if raw.dtype == np.float64 else raw.view(np.float64)
    else:
        raise KilnError(None, f"cannot convert tensor data of type {dtype} to float (supported: F32, F16, BF16, F64)")
    out = np.empty(src.shape, dtype=np.float32)
    np.copyto(out, src, casting="unsafe")  # float64 -> float32 rounds to nearest even, like C
    return out


# --------------------------------------------------------------------------- quantize


def quantize(x: np.ndarray, qtype) -> np.ndarray:
    """float32 rows -> a C-contiguous array whose bytes are exactly the GGUF data of those rows.

    `x` has shape (..., ncols) (normally (rows, ncols)) and is not modified.  F32 comes back as
    float32 (x itself when it already is C-contiguous float32), F16 as float16, BF16 as uint16
    bit patterns, all of x's shape; Q8_0 and Q4_0 come back as uint8 of shape
    (..., row_nbytes(ncols, qtype)).  ValueError when ncols is not a multiple of the block size.
    Thread-safe; numpy releases the GIL for the heavy loops, so threads run in parallel.
    """
    qtype = _check_qtype(qtype)
    if qtype not in _NUMPY_TYPES:
        raise ValueError(f"{qtype.name} is quantized by ggml only (use encode)")
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError("cannot quantize a 0-d array")
    nbytes = row_nbytes(x.shape[-1], qtype)  # raises ValueError on a bad row length
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x, dtype=np.float32)
    if qtype == QT.F32:
        return x

    flat = x.reshape(-1)
    with np.errstate(all="ignore"):
        if qtype == QT.F16:
            out16 = np.empty(flat.size, dtype=np.uint16)
            _f16_sliced(flat, out16)
            return out16.view(np.float16).reshape(x.shape)
        if qtype == QT.BF16:
            return _to_bf16(flat).reshape(x.shape)
        out = np.empty(x.shape[:-1] + (nbytes,), dtype=np.uint8)
        if flat.size:
            blocks = out.reshape(-1, GGML_QUANT_SIZES[qtype][1])
            (_q8_0 if qtype == QT.Q8_0 else _q4_0)(flat, blocks)
        return out


_SLICE = _SLICE_BLOCKS * 32


def _f16_bits(x: np.ndarray, out: np.ndarray, a: np.ndarray, t: np.ndarray) -> None:
    """float32 (1-D) -> IEEE half bit patterns in `out` (uint16), rounding to nearest even.

    Integer arithmetic on the float32 bits (numpy's own float16 cast is a slower scalar loop):
    normal halves round away the 13 low mantissa bits as in `_to_bf16` and re-bias the exponent
    (the carry of a round-up moves into the exponent, as it should); magnitudes that round to
    65536 or more become inf; magnitudes below 2**-14 (half subnormals) take their bits from
    `|x| + 0.5f`, whose float32 rounding is exactly the half subnormal rounding.  A NaN becomes
    ggml's canonical 0x7e00 (plus sign).  `a`, `t`: uint32 scratch of x's length.
    """
    u32 = np.uint32
    u = x.view(u32)
    np.bitwise_and(u, u32(0x7FFFFFFF), out=a)
    np.right_shift(a, u32(13), out=t)
    np.bitwise_and(t, u32(1), out=t)
    np.add(t, a, out=t)
    # + 0xfff rounds; - (112 << 23) turns the float32 exponent bias (127) into half's (15).
    # Magnitudes below 2**-14 wrap around here and are redone below.
    np.add(t, u32((0xFFF - (112 << 23)) & 0xFFFFFFFF), out=t)
    np.right_shift(t, u32(13), out=t)
    if a.size and np.max(a) >= u32(0x477FF000):  # |x| >= 65520 rounds to inf; also inf, NaN
        t[a >= u32(0x477FF000)] = 0x7C00
        t[a > u32(0x7F800000)] = 0x7E00
    tiny = a < u32(0x38800000)
    count = np.count_nonzero(tiny)
    if count:
        if count * 16 < a.size:
            idx = np.flatnonzero(tiny)
            t[idx] = (a[idx].view(np.float32) + _F32(0.5)).view(u32) - u32(0x3F000000)
        else:
            f = a.view(np.float32)
            np.add(f, _F32(0.5), out=f)
            np.subtract(a, u32(0x3F000000), out=a)
            np.copyto(t, a, where=tiny)
    np.right_shift(u, u32(16), out=a)
    np.bitwise_and(a, u32(0x8000), out=a)
    np.bitwise_or(t, a, out=out, casting="unsafe")


def _f16_sliced(src: np.ndarray, dst: np.ndarray) -> None:
    """float32 src -> half bit patterns in dst (uint16, same length, may be strided)."""
    n = src.size
    step = max(1, min(n, _SLICE))
    a = np.empty(step, dtype=np.uint32)
    t = np.empty(step, dtype=np.uint32)
    for s in range(0, n, step):
        e = min(s + step, n)
        _f16_bits(src[s:e], dst[s:e], a[: e - s], t[: e - s])


def _to_bf16(flat: np.ndarray) -> np.ndarray:
    n = flat.size
    out = np.empty(n, dtype=np.uint16)
    u = flat.view(np.uint32)
    t = np.empty(min(n, _SLICE), dtype=np.uint32)
    u32 = np.uint32
    for s in range(0, n, _SLICE):
        e = min(s + _SLICE, n)
        us, ts, os_ = u[s:e], t[: e - s], out[s:e]
        np.right_shift(us, u32(16), out=ts)
        np.bitwise_and(ts, u32(1), out=ts)
        np.add(ts, us, out=ts)
        np.add(ts, u32(0x7FFF), out=ts)  # no wrap: finite bit patterns are <= 0xff800000
        np.right_shift(ts, u32(16), out=os_, casting="unsafe")
        if np.isnan(np.max(flat[s:e])):  # max() propagates NaN: one fast pass finds any
            nan = np.flatnonzero(np.isnan(flat[s:e]))
            os_[nan] = ((us[nan] >> u32(16)) | u32(0x0040)).astype(np.uint16)
    return out


def _block_reduce(a: np.ndarray, nb: int, tmp: np.ndarray, op) -> np.ndarray:
    """op-reduce each run of 32 elements of `a` (length nb*32) -> (nb,), by halving pairs.

    Neighbour pairs are combined by long 1-D strided loops, which numpy runs several times
    faster than a reduction along a 32-element axis.  The result is a view into `tmp`.
    """
    size = nb * 16
    m = tmp[:size]
    p = a.reshape(size, 2)
    op(p[:, 0], p[:, 1], out=m)
    while size > nb:
        size //= 2
        p = m[: size * 2].reshape(size, 2)
        op(p[:, 0], p[:, 1], out=m[:size])
    return m[:nb]


def _void(nbytes: int) -> np.dtype:
    return np.dtype((np.void, nbytes))


def _store_scales(d: np.ndarray, out: np.ndarray) -> None:
    """float32 block scales -> the fp16 `d` field (first 2 bytes) of each block row of `out`."""
    _f16_sliced(d, out[:, 0:2].view(np.uint16)[:, 0])


def _inverse(d: np.ndarray, out: np.ndarray) -> None:
    """out = d ? 1.0f/d : 0.0f"""
    np.divide(_F32(1), d, out=out)
    zero = d == 0
    if zero.any():
        out[zero] = 0


def _zero_nonfinite(xs: np.ndarray, inv: np.ndarray, peak: np.ndarray, q: np.ndarray) -> None:
    """Where x*id is not finite, make the quant 0, as ggml's float->int8 conversion does on x86.

    That happens only in blocks whose 1/d overflowed (all |x| below about 4e-37), or whose
    largest value is inf or NaN; numpy's own cast of inf/NaN is platform dependent.
    """
    bad = ~(np.isfinite(inv) & np.isfinite(peak))
    if bad.any():
        rows = np.flatnonzero(bad)
        y = xs.reshape(-1, 32)[rows] * inv[rows, None]
        q2 = q.reshape(-1, 32)
        q2[rows] = np.where(np.isfinite(y), q2[rows], 0)


def _q8_0(flat: np.ndarray, out: np.ndarray) -> None:
    nblocks = out.shape[0]
    cap = min(nblocks, _SLICE_BLOCKS)
    a = np.empty(cap * 32, dtype=np.float32)  # |x|, then |x|*id
    tree = np.empty(cap * 16, dtype=np.uint32)
    inv = np.empty(cap, dtype=np.float32)
    q = np.empty(cap * 32, dtype=np.int8)
    neg = np.empty(cap * 32, dtype=np.bool_)
    mask = np.empty(cap * 32, dtype=np.int8)
    scales = np.empty(nblocks, dtype=np.float32)
    out_q = out[:, 2:34].view(_void(32))[:, 0]

    for b0 in range(0, nblocks, _SLICE_BLOCKS):
        b1 = min(b0 + _SLICE_BLOCKS, nblocks)
        nb, n = b1 - b0, (b1 - b0) * 32
        xs = flat[b0 * 32 : b1 * 32]
        A, D, ID, Q, S, M = a[:n], scales[b0:b1], inv[:nb], q[:n], neg[:n], mask[:n]

        np.abs(xs, out=A)
        np.signbit(xs, out=S)  # while xs is still in cache
        # max |x| per block; non-negative floats order like their bit patterns, and the
        # integer maximum is the faster loop
        amax = _block_reduce(A.view(np.uint32), nb, tree, np.maximum).view(np.float32)
        np.divide(amax, _F32(127), out=D)
        _inverse(D, ID)

        # roundf(x*id) = sign(x) * trunc(|x|*id + 0.49999997f): |x*id| == |x|*id exactly, and
        # in float32, adding the largest float below one half then truncating rounds exact
        # halves away from zero and everything below a half (0.49999997 included) toward it.
        A2 = A.reshape(nb, 32)
        np.multiply(A2, ID[:, None], out=A2)
        np.add(A, _HALF_BELOW, out=Q, casting="unsafe")  # float -> int8 truncates
        # sign: (q ^ m) - m == -q where m == -1 (x negative), q where m == 0
        np.negative(S.view(np.int8), out=M)
        np.bitwise_xor(Q, M, out=Q)
        np.subtract(Q, M, out=Q)
        _zero_nonfinite(xs, ID, amax, Q)
        np.copyto(out_q[b0:b1], Q.view(_void(32)))
    _store_scales(scales, out)


def _q4_0(flat: np.ndarray, out: np.ndarray) -> None:
    nblocks = out.shape[0]
    cap = min(nblocks, _SLICE_BLOCKS)
    y = np.empty(cap * 32, dtype=np.float32)
    tree = np.empty(cap * 16, dtype=np.float32)
    mx = np.empty(cap, dtype=np.float32)
    negmin = np.empty(cap, dtype=np.float32)
    inv = np.empty(cap, dtype=np.float32)
    q = np.empty(cap * 32, dtype=np.uint8)
    shifted = np.empty(cap * 4, dtype=np.uint64)
    packed = np.empty(cap * 2, dtype=np.uint64)
    scales = np.empty(nblocks, dtype=np.float32)
    out_q = out[:, 2:18].view(_void(16))[:, 0]

    for b0 in range(0, nblocks, _SLICE_BLOCKS):
        b1 = min(b0 + _SLICE_BLOCKS, nblocks)
        nb, n = b1 - b0, (b1 - b0) * 32
        xs = flat[b0 * 32 : b1 * 32]
        Y, MX, NM, D, ID, Q = y[:n], mx[:nb], negmin[:nb], scales[b0:b1], inv[:nb], q[:n]

        # the signed value of largest magnitude, the first one on ties (`if (amax < fabsf(v))`)
        np.copyto(MX, _block_reduce(xs, nb, tree, np.maximum))
        np.negative(_block_reduce(xs, nb, tree, np.minimum), out=NM)
        V = np.where(NM > MX, -NM, MX)
        tie = (NM == MX) & (MX > 0)
        if tie.any():  # both +a and -a are present: whichever comes first wins
            rows = np.flatnonzero(tie)
            xb = xs.reshape(nb, 32)[rows]
            V[rows] = xb[np.arange(rows.size), np.argmax(np.abs(xb), axis=1)]
        np.add(V, _F32(0), out=V)  # all zeros: ggml keeps its initial +0.0 (so d == -0.0)
        np.divide(V, _F32(-8), out=D)
        _inverse(D, ID)

        np.multiply(xs.reshape(nb, 32), ID[:, None], out=Y.reshape(nb, 32))
        np.add(Y, _EIGHT_HALF, out=Q, casting="unsafe")  # (x*id + 8.5f), truncated
        _zero_nonfinite(xs, ID, V, Q)

        # Eight bytes at a time: clamp to 15 (the only larger value is 16: subtract its bit 4,
        # 16 -> 15), then pack nibbles.  Per block the words are [lo, lo, hi, hi] (elements
        # 0-7, 8-15, 16-23, 24-31); every byte is <= 15, so `<< 4` never crosses a byte.
        Q64 = Q.view(np.uint64)
        H = shifted[: nb * 4]
        P = packed[: nb * 2]
        np.right_shift(Q64, np.uint64(4), out=H)
        np.bitwise_and(H, np.uint64(0x0101010101010101), out=H)
        np.subtract(Q64, H, out=Q64)
        np.left_shift(Q64, np.uint64(4), out=H)
        np.bitwise_or(Q64[0::4], H[2::4], out=P[0::2])
        np.bitwise_or(Q64[1::4], H[3::4], out=P[1::2])
        np.copyto(out_q[b0:b1], P.view(_void(16)))
    _store_scales(scales, out)
