"""convert.quants: byte-exactness against ggml itself (libggml from llama-cpp-python, called with
ctypes) and against gguf-py's numpy quantizers, on random data and on hand-built edge cases."""
from __future__ import annotations

import ctypes
import threading
import time

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType
from gguf import quants as gguf_quants

from convert.errors import KilnError
from convert.quants import (
    FILE_TYPES,
    QUANT_NAMES,
    bf16_to_f32,
    block_size,
    parse_quant,
    quantize,
    row_nbytes,
    to_f32,
)

Q = GGMLQuantizationType
ALL_TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0]
BLOCK_TYPES = [Q.Q8_0, Q.Q4_0]


# --- witnesses -------------------------------------------------------------------------------

class Ggml:
    """ggml's own converters, straight from the shared library llama-cpp-python ships."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        f = lib.ggml_quantize_chunk
        f.restype = ctypes.c_size_t
        f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                      ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        lib.ggml_quantize_init.argtypes = [ctypes.c_int]
        lib.ggml_quantize_init.restype = None
        for name in ("ggml_fp16_to_fp32_row", "ggml_bf16_to_fp32_row"):
            g = getattr(lib, name)
            g.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            g.restype = None

    def quantize(self, x: np.ndarray, qtype: Q) -> bytes:
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows, n = x.shape
        bs, ts = GGML_QUANT_SIZES[qtype]
        assert n % bs == 0  # ggml would abort the whole test process
        dst = np.zeros(rows * (n // bs) * ts, dtype=np.uint8)
        self.lib.ggml_quantize_init(int(qtype))
        written = self.lib.ggml_quantize_chunk(int(qtype), x.ctypes.data, dst.ctypes.data, 0, rows, n, None)
        assert written == dst.size
        return dst.tobytes()

    def half_to_f32(self, u16: np.ndarray, bf16: bool) -> np.ndarray:
        u16 = np.ascontiguousarray(u16, dtype=np.uint16)
        out = np.empty(u16.size, dtype=np.float32)
        fn = self.lib.ggml_bf16_to_fp32_row if bf16 else self.lib.ggml_fp16_to_fp32_row
        fn(u16.ctypes.data, out.ctypes.data, u16.size)
        return out


@pytest.fixture(scope="module")
def ggml() -> Ggml:
    from convert import ggml as kiln_ggml

    try:
        import llama_cpp  # noqa: F401
    except Exception as e:  # pragma: no cover - llama-cpp-python is installed in CI
        pytest.skip(f"llama_cpp (llama-cpp-python) cannot be imported, so ggml is not available as a witness: {e!r}")
    lib = kiln_ggml.library(required=False)
    if lib is None:
        pytest.fail(f"llama_cpp is installed but no library exports ggml_quantize_chunk (tried {kiln_ggml._tried})")
    return Ggml(lib)


def gguf_py(x: np.ndarray, qtype: Q) -> bytes:
    with np.errstate(all="ignore"):
        return np.ascontiguousarray(gguf_quants.quantize(np.asarray(x, dtype=np.float32), qtype)).tobytes()


def ours(x: np.ndarray, qtype: Q) -> bytes:
    out = quantize(x, qtype)
    assert out.flags.c_contiguous
    rows = int(np.prod(x.shape[:-1]))
    assert out.nbytes == rows * row_nbytes(x.shape[-1], qtype)
    return out.tobytes()


def first_diff(a: bytes, b: bytes, qtype: Q) -> str:
    if len(a) != len(b):
        return f"lengths differ: {len(a)} != {len(b)}"
    x, y = np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)
    bad = np.flatnonzero(x != y)
    if not bad.size:
        return "equal"
    ts = GGML_QUANT_SIZES[qtype][1]
    i = bad[0] // ts * ts
    return f"{bad.size} bytes differ; first in block at byte {i}: ours {x[i:i + ts].tolist()} vs {y[i:i + ts].tolist()}"


def assert_exact(x: np.ndarray, qtype: Q, ggml: Ggml | None, use_gguf: bool = True) -> None:
    got = ours(x, qtype)
    if ggml is not None:
        want = ggml.quantize(x, qtype)
        assert got == want, f"{qtype.name} vs ggml: {first_diff(got, want, qtype)}"
    if use_gguf:
        want = gguf_py(x, qtype)
        assert got == want, f"{qtype.name} vs gguf-py: {first_diff(got, want, qtype)}"


def f32(bits) -> np.ndarray:
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def blocks(*rows, fill: bool = True) -> np.ndarray:
    """One 32-wide block per argument; shorter ones are padded with small filler values
    (between -0.3 and 0.2) or, with fill=False, with zeros."""
    out = np.zeros((len(rows), 32), dtype=np.float32)
    for i, r in enumerate(rows):
        r = np.asarray(r, dtype=np.float32).ravel()
        out[i, : r.size] = r
        if fill:
            out[i, r.size:] = np.linspace(-0.3, 0.2, 32 - r.size, dtype=np.float32)
    return out


# --- random data --------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("scale", [1e-30, 1e-5, 0.02, 1.0, 300.0, 1e6, 1e30])
def test_random_normal_matches_ggml_and_gguf(ggml, qtype, scale):
    rng = np.random.default_rng(int(scale * 1e3) % 2**32 + int(qtype))
    x = (rng.standard_normal((6, 2048)) * scale).astype(np.float32)
    assert_exact(x, qtype, ggml)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda q: q.name)
def test_many_slices_and_odd_shapes(ggml, qtype):
    # 5 x 32 x 1000 = 5000 blocks: more than one internal slice, the last one partial
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((5, 32 * 1000)) * 0.05).astype(np.float32)
    x[1, 64:96] = 0  # an all-zero block in the middle
    assert_exact(x, qtype, ggml)
    # a single block, a single row, and a 3-D input
    assert_exact(x[:1, :32], qtype, ggml)
    got = quantize(x[:4].reshape(2, 2, -1), qtype)
    assert got.tobytes() == ggml.quantize(x[:4], qtype)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda q: q.name)
def test_weight_like_data(ggml, qtype):
    """Heavy tails, exact zeros, repeated values, rows of very different scales."""
    rng = np.random.default_rng(5)
    x = rng.standard_t(3, size=(64, 512)).astype(np.float32) * np.float32(0.02)
    x *= np.logspace(-4, 2, 64, dtype=np.float32)[:, None]
    x[rng.random(x.shape) < 0.05] = 0
    x[::7, ::3] = np.float32(0.125)
    x[3] = rng.integers(-8, 9, 512).astype(np.float32)  # small integers: many exact ties
    assert_exact(x, qtype, ggml)


def test_quantize_does_not_touch_input_and_accepts_readonly(ggml):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 256)).astype(np.float32)
    keep = x.copy()
    x.flags.writeable = False
    for qtype in ALL_TYPES:
        assert ours(x, qtype) == ggml.quantize(keep, qtype)
    assert np.array_equal(x, keep)


def test_non_contiguous_and_float64_input(ggml):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((64, 128))
    x = base[::2, :64]  # strided float64
    want32 = np.ascontiguousarray(x, dtype=np.float32)
    for qtype in ALL_TYPES:
        assert quantize(x, qtype).tobytes() == ggml.quantize(want32, qtype), qtype.name


def test_threads_give_identical_bytes(ggml):
    rng = np.random.default_rng(4)
    xs = [(rng.standard_normal((40, 4096)) * 0.1).astype(np.float32) for _ in range(4)]
    want = {(i, q): ggml.quantize(x, q) for i, x in enumerate(xs) for q in BLOCK_TYPES + [Q.F16, Q.BF16]}
    got: dict = {}

    def work(i):
        for q in BLOCK_TYPES + [Q.F16, Q.BF16]:
            got[(i, q)] = quantize(xs[i], q).tobytes()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want


# --- Q8_0 / Q4_0 edge cases ---------------------------------------------------------------------

def q8_block(x: np.ndarray) -> tuple[float, np.ndarray]:
    raw = quantize(x.reshape(1, 32), Q.Q8_0).ravel()
    return float(raw[:2].view(np.float16)[0]), raw[2:].view(np.int8)


def q4_block(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    raw = quantize(x.reshape(1, 32), Q.Q4_0).ravel()
    q = np.concatenate([raw[2:] & 15, raw[2:] >> 4])
    return raw[:2].view(np.float16), q


def test_q8_0_rounds_halves_away_from_zero(ggml):
    # amax = 127 -> d = 1, id = 1: x*id == x exactly, so these are exact .5 ties
    halves = np.array([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, -3.5, 125.5, -126.5], np.float32)
    x = blocks(np.concatenate([[127.0], halves]))
    d, q = q8_block(x[0])
    assert d == 1.0
    assert q[1:11].tolist() == [1, 2, 3, 4, -1, -2, -3, -4, 126, -127]  # banker's would give 0, 2, 2, 4...
    # the same ties at other scales (amax = 127 * 2**k keeps id a power of two)
    for k in (-20, -3, 5, 60):
        s = np.float32(2.0**k)
        assert_exact(x * s, Q.Q8_0, ggml)
        assert np.array_equal(q8_block(x[0] * s)[1], q)
    assert_exact(x, Q.Q8_0, ggml)


def test_q8_0_just_below_half_rounds_down(ggml):
    below = np.nextafter(np.float32(0.5), np.float32(0))  # 0.49999997
    vals = [127.0, below, -below, np.float32(1.5) - np.float32(2**-23), np.float32(2.5) - np.float32(2**-22),
            np.nextafter(np.float32(126.5), np.float32(0)), -np.nextafter(np.float32(126.5), np.float32(0))]
    x = blocks(vals)
    d, q = q8_block(x[0])
    assert q[1:7].tolist() == [0, 0, 1, 2, 126, -126]  # trunc(x + 0.5f) would give 1 for 0.49999997
    assert_exact(x, Q.Q8_0, ggml)


def test_q8_0_ties_after_inexact_scaling(ggml):
    """x*id lands on k + 0.5 only after float32 rounding: search such values and compare."""
    rng = np.random.default_rng(9)
    amax = np.float32(3.3)
    d = amax / np.float32(127)
    inv = np.float32(1) / d
    found = []
    for k in range(-126, 126):
        c = (np.float32(k) + np.float32(0.5)) / inv
        for v in (c, np.nextafter(c, np.float32(-1e9)), np.nextafter(c, np.float32(1e9))):
            if np.float32(v) * inv == np.float32(k) + np.float32(0.5) and abs(v) < amax:
                found.append(v)
    assert len(found) > 50
    found = np.array(found, dtype=np.float32)
    rng.shuffle(found)
    rows = []
    for i in range(0, found.size - 30, 31):
        rows.append(np.concatenate([[amax], found[i:i + 31]]))
    x = np.stack(rows).astype(np.float32)
    assert_exact(x, Q.Q8_0, ggml)
    assert_exact(-x, Q.Q8_0, ggml)


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda q: q.name)
def test_zero_blocks(ggml, qtype):
    x = np.zeros((3, 64), np.float32)
    x[1] = -0.0
    x[2, :32] = -0.0
    x[2, 32:] = 1.0
    # gguf-py only for +0.0 blocks: for a block of -0.0 it takes max = -0.0 and writes d = +0.0,
    # while ggml keeps its initial max = +0.0 and writes d = -0.0 for Q4_0
    assert_exact(x, qtype, ggml, use_gguf=qtype == Q.Q8_0)
    assert ours(x[:1], qtype) == gguf_py(x[:1], qtype)
    raw = ours(x, qtype)
    if qtype == Q.Q8_0:
        assert raw[:34] == bytes(34)  # d = +0.0, all q = 0
        assert raw[34 * 2: 34 * 3] == bytes(34)  # -0.0 too
    else:
        # ggml keeps max = +0.0, so d = 0.0 / -8 = -0.0 (0x8000); every nibble is 8
        assert raw[:18] == bytes([0x00, 0x80]) + bytes([0x88]) * 16
        assert raw[18 * 2: 18 * 3] == bytes([0x00, 0x80]) + bytes([0x88]) * 16


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda q: q.name)
def test_one_huge_value_per_block(ggml, qtype):
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((8, 32)) * 0.01).astype(np.float32)
    for i, big in enumerate([1e4, -1e4, 6e4, 65504 * 127, 1e7, -1e9, 3e38, -3.4028235e38]):
        x[i, (7 * i) % 32] = big  # d overflows fp16 to inf for the larger ones, as in ggml
    assert_exact(x, qtype, ggml)


def test_q4_0_negative_largest_magnitude(ggml):
    x = blocks([0.5, -4.0, 3.0, 3.9999998])
    dbits, q = q4_block(x[0])
    assert float(dbits[0]) == 0.5  # d = max / -8 with max = -4
    assert q[1] == 0  # -4 * (1/0.5) + 8.5 = 0.5 -> 0
    assert q[2] == 14  # 3 * 2 + 8.5 = 14.5 -> 14
    assert_exact(x, Q.Q4_0, ggml)
    assert_exact(-x, Q.Q4_0, ggml)


def test_q4_0_magnitude_ties_first_wins(ggml):
    a = np.float32(2.75)
    rows = []
    for i, j in [(0, 1), (1, 0), (0, 31), (31, 0), (15, 16), (16, 15), (3, 4), (4, 3), (7, 8), (30, 31)]:
        r = np.linspace(-1, 1, 32, dtype=np.float32)
        r[i], r[j] = a, -a
        rows.append(r)
    r = np.full(32, -a, np.float32)  # all the same magnitude
    r[5::2] = a
    rows.append(r)
    x = np.stack(rows)
    assert_exact(x, Q.Q4_0, ggml)
    d = quantize(x, Q.Q4_0)[:, :2].copy().view(np.float16).ravel()
    sign_of_first = [1 if i < j else -1 for i, j in [(0, 1), (1, 0), (0, 31), (31, 0), (15, 16), (16, 15), (3, 4),
                                                      (4, 3), (7, 8), (30, 31)]] + [-1]
    # d = max / -8: a positive first occurrence gives a negative d
    assert np.sign(d).tolist() == [-s for s in sign_of_first]
    assert_exact(x, Q.Q8_0, ggml)


def test_q4_0_truncation_and_clamp(ggml):
    # max = -8 -> d = 1, id = 1; q = min(15, (int8)(x + 8.5f))
    below = np.nextafter(np.float32(0.5), np.float32(0))
    vals = [-8.0, 8.0, 7.5, 7.4999995, -0.5, below, -below, 0.0, -7.9999995, 6.5]
    x = blocks(vals)
    dbits, q = q4_block(x[0])
    assert float(dbits[0]) == 1.0
    # 8 + 8.5 = 16.5 -> 16 -> clamped 15; 0.49999997 + 8.5 rounds to 9.0 in float32 -> 9
    assert q[:10].tolist() == [0, 15, 15, 15, 8, 9, 8, 8, 0, 15]
    assert_exact(x, Q.Q4_0, ggml)
    for k in (-30, -7, 9, 90):
        assert_exact(x * np.float32(2.0**k), Q.Q4_0, ggml)


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda q: q.name)
def test_subnormal_and_tiny_blocks(ggml, qtype):
    tiny = np.float32(1.4e-45)
    x = blocks(
        [1.0, tiny, -tiny, 1e-39, -1e-40],  # subnormals next to a normal value: quantize to ~0
        np.full(32, 1e-39, np.float32),  # every value subnormal: 1/d overflows to inf in ggml
        [tiny, -tiny, 0.0],  # the smallest subnormals
        [3e-37, -1e-37, 2e-38],  # d subnormal but 1/d still finite
        [1.17549435e-38, -5e-39],  # FLT_MIN
        [4e-37, 1e-38, -4e-37],
        fill=False,
    )
    assert_exact(x, qtype, ggml)
    # ggml's result where 1/d overflowed (x86 float->int conversion of inf/NaN gives 0)
    raw = quantize(x[1:2], qtype).ravel()
    assert raw[2:].tolist() == [0] * (raw.size - 2)


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda q: q.name)
def test_infinite_values(ggml, qtype):
    x = blocks([np.inf, 1.0, -2.0, 0.0], [-np.inf, 1.0], [np.inf, -np.inf, 3.0])
    assert_exact(x, qtype, ggml, use_gguf=False)


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda q: q.name)
def test_nan_in_block_gives_nan_scale_and_zero_quants(qtype):
    # not ggml's bytes (its MAX macro keeps what follows the last NaN), but defined and harmless
    x = blocks([np.nan, 1.0], [1.0, -np.nan], [2.0, 1.0])
    out = quantize(x, qtype)
    assert out.shape == (3, row_nbytes(32, qtype))
    d = out[:, :2].copy().view(np.float16).ravel()
    assert np.isnan(d[:2]).all() and np.isfinite(d[2])
    assert not out[:2, 2:].any()
    assert out[2, 2:].any()


# --- F16 / BF16 / F32 ---------------------------------------------------------------------------

SPECIAL_BITS = [
    0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x00800000, 0x3F800000, 0xBF800000,
    0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000,
    0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF, 0x7FA00000, 0x7F801000,
    # bf16 ties: low half exactly 0x8000 with even / odd upper half, and one ulp either side
    0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0xBF808000, 0xBF818000, 0x7F7F8000, 0x7F7FFFFF,
    0x00008000, 0x00018000, 0x807F8000,
    # f16: largest finite, the overflow tie, beyond
    0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FF001, 0x47800000, 0xC77FF000, 0x47C35000,
    # f16 subnormal range and ties there: 2**-24, 2**-25 (tie -> 0), 3 * 2**-25 (tie -> 2 * 2**-24)
    0x33800000, 0x33000000, 0x33000001, 0x33C00000, 0x38800000, 0x387FFFFF, 0x387FC000, 0x387FE000, 0x387FF000,
    0x38000000, 0xB3000000, 0xB3C00000, 0x32FFFFFF,
    # f16 normal ties: 1 + 2**-11 (even -> down), 1 + 3 * 2**-11 (odd -> up)
    0x3F801000, 0x3F803000, 0x3F800FFF, 0x3F801001,
]


def special_values() -> np.ndarray:
    v = f32(SPECIAL_BITS)
    return np.tile(v, 2)[: len(SPECIAL_BITS) * 2].reshape(2, -1)


def test_bf16_special_values(ggml):
    x = special_values()
    got = quantize(x, Q.BF16)
    assert got.dtype == np.uint16
    assert got.tobytes() == ggml.quantize(x, Q.BF16)
    want = {
        0x3F808000: 0x3F80, 0x3F818000: 0x3F82, 0x3F807FFF: 0x3F80, 0x3F808001: 0x3F81,  # ties to even
        0xBF808000: 0xBF80, 0xBF818000: 0xBF82, 0x7F7FFFFF: 0x7F80, 0x7F7F8000: 0x7F80,  # rounds to inf
        0x00008000: 0x0000, 0x00018000: 0x0002,
        0x7F800000: 0x7F80, 0xFF800000: 0xFF80,
        0x7FC00000: 0x7FC0, 0x7F800001: 0x7FC0, 0xFF800001: 0xFFC0, 0x7FFFFFFF: 0x7FFF,  # NaN: quiet, kept
        0xFFFFFFFF: 0xFFFF, 0x7FA00000: 0x7FE0, 0x7F801000: 0x7FC0,
    }
    flat = dict(zip(SPECIAL_BITS, got.ravel()[: len(SPECIAL_BITS)].tolist()))
    for bits, h in want.items():
        assert flat[bits] == h, f"{bits:#010x} -> {flat[bits]:#06x}, want {h:#06x}"


def test_f16_special_values(ggml):
    x = special_values()
    got = quantize(x, Q.F16)
    assert got.dtype == np.float16
    assert got.tobytes() == ggml.quantize(x, Q.F16)
    want = {
        0x477FE000: 0x7BFF, 0x477FEFFF: 0x7BFF, 0x477FF000: 0x7C00, 0x47800000: 0x7C00, 0xC77FF000: 0xFC00,
        0x7F7FFFFF: 0x7C00, 0x33800000: 0x0001, 0x33000000: 0x0000, 0x33000001: 0x0001, 0x33C00000: 0x0002,
        0x38800000: 0x0400, 0x387FF000: 0x0400, 0x387FC000: 0x03FF, 0xB3C00000: 0x8002,
        0x387FE000: 0x0400,  # 1023.5 units of 2**-24: a tie, to even
        0x3F801000: 0x3C00, 0x3F803000: 0x3C02, 0x80000000: 0x8000,
        0x7FC00000: 0x7E00, 0x7F800001: 0x7E00, 0xFFFFFFFF: 0xFE00, 0x7F800000: 0x7C00,  # NaN: ggml's 0x7e00
    }
    flat = dict(zip(SPECIAL_BITS, got.view(np.uint16).ravel()[: len(SPECIAL_BITS)].tolist()))
    for bits, h in want.items():
        assert flat[bits] == h, f"{bits:#010x} -> {flat[bits]:#06x}, want {h:#06x}"
    finite = np.isfinite(x)
    with np.errstate(over="ignore"):
        assert np.array_equal(got[finite].view(np.uint16), x[finite].astype(np.float16).view(np.uint16))


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16], ids=lambda q: q.name)
def test_random_bit_patterns(ggml, qtype):
    """Every exponent, random mantissas, NaN payloads included: 2**20 patterns."""
    rng = np.random.default_rng(int(qtype))
    bits = rng.integers(0, 2**32, size=2**20, dtype=np.uint64).astype(np.uint32)
    # concentrate a quarter of them around the f16 range and its subnormal boundary
    bits[: 2**18] = (bits[: 2**18] & np.uint32(0x807FFFFF)) | (
        rng.integers(96, 145, size=2**18, dtype=np.uint64).astype(np.uint32) << np.uint32(23))
    # and some with the bits that decide rounding set exactly to a tie
    low = 0x0FFF if qtype == Q.F16 else 0x7FFF
    ties = slice(2**18, 2**18 + 4096)
    bits[ties] = (bits[ties] & np.uint32(~low & 0xFFFFFFFF)) | np.uint32(low + 1)
    x = bits.view(np.float32).reshape(256, -1)
    assert quantize(x, qtype).tobytes() == ggml.quantize(x, qtype)
    finite = x[np.isfinite(x)].reshape(1, -1)
    with np.errstate(over="ignore"):
        assert quantize(finite, qtype).tobytes() == gguf_py(finite, qtype)


def test_f16_many_half_subnormals(ggml):
    # whole slices of values in the half-subnormal range, plus sparse ones in normal data
    rng = np.random.default_rng(8)
    dense = (rng.standard_normal((4, 32768)) * 3e-6).astype(np.float32)
    sparse = (rng.standard_normal((4, 32768)) * 0.02).astype(np.float32)
    for x in (dense, sparse):
        assert quantize(x, Q.F16).tobytes() == ggml.quantize(x, Q.F16)
        assert np.array_equal(quantize(x, Q.F16), x.astype(np.float16))


def test_f32_passthrough(ggml):
    x = special_values()
    got = quantize(x, Q.F32)
    assert got.dtype == np.float32 and got.tobytes() == x.tobytes() == ggml.quantize(x, Q.F32)


# --- to_f32 --------------------------------------------------------------------------------------

def test_bf16_to_f32_all_patterns(ggml):
    u = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    got = to_f32(u, "BF16")
    assert got.dtype == np.float32
    assert got.view(np.uint32).tolist() == ggml.half_to_f32(u, bf16=True).view(np.uint32).tolist()
    assert bf16_to_f32(np.uint16(0x3F80)) == 1.0
    assert bf16_to_f32(np.array([0xC000], np.uint16)).tolist() == [-2.0]
    # the round trip through quantize is exact for every non-NaN pattern
    keep = ~np.isnan(got)
    assert np.array_equal(quantize(got[keep].reshape(1, -1), Q.BF16).ravel(), u[keep])


def test_f16_to_f32_all_patterns(ggml):
    u = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    got = to_f32(u.view(np.float16), "F16")
    want = ggml.half_to_f32(u, bf16=False)
    finite = ~np.isnan(want)
    assert np.array_equal(got.view(np.uint32)[finite], want.view(np.uint32)[finite])
    assert np.isnan(got[~finite]).all() and np.isnan(got).sum() == (~finite).sum()
    assert np.array_equal(to_f32(u, "F16").view(np.uint32), got.view(np.uint32))  # raw uint16 accepted


def test_to_f32_readonly_memmap(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((16, 64)).astype(np.float32)
    bf = (data.view(np.uint32) >> 16).astype(np.uint16)
    cases = {
        "BF16": (bf, (bf.astype(np.uint32) << 16).view(np.float32)),
        "F16": (data.astype(np.float16), data.astype(np.float16).astype(np.float32)),
        "F32": (data, data),
        "F64": (data.astype(np.float64) / 3, (data.astype(np.float64) / 3).astype(np.float32)),
    }
    for dtype, (arr, want) in cases.items():
        path = tmp_path / f"{dtype}.bin"
        arr.tofile(path)
        mm = np.memmap(path, dtype=arr.dtype, mode="r", shape=arr.shape)
        before = path.read_bytes()
        got = to_f32(mm[3:9], dtype)
        assert got.dtype == np.float32 and got.shape == (6, 64) and got.flags.c_contiguous
        assert got.flags.writeable
        assert np.array_equal(got, want[3:9]), dtype
        got[:] = 0  # a fresh array, not a view of the file
        assert path.read_bytes() == before
        assert np.array_equal(np.asarray(mm), arr)
        del mm


def test_to_f32_rejects_other_dtypes():
    with pytest.raises(KilnError, match="I64"):
        to_f32(np.zeros(4, np.int64), "I64")
    with pytest.raises(ValueError):
        bf16_to_f32(np.zeros(4, np.float32))  # bf16 comes as bit patterns, never as floats


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("shape", [(0, 64), (3, 0), (0,)])
def test_empty_input(qtype, shape):
    out = quantize(np.zeros(shape, np.float32), qtype)
    assert out.size == 0 and out.shape == shape[:-1] + (row_nbytes(shape[-1], qtype) // np.dtype(out.dtype).itemsize,)


# --- names, sizes, errors ------------------------------------------------------------------------

def test_parse_quant_names():
    for name, default, ftype in [("Q8_0", Q.Q8_0, 7), ("q4_0", Q.Q4_0, 2), ("F16", Q.F16, 1),
                                 ("bf16", Q.BF16, 32), ("f32", Q.F32, 0), ("Q4_K_M", Q.Q4_K, 15),
                                 ("q4_k_s", Q.Q4_K, 14), ("Q5_K_M", Q.Q5_K, 17), ("q6_k", Q.Q6_K, 18),
                                 ("Q3_K_S", Q.Q3_K, 11), ("q3_k_m", Q.Q3_K, 12), ("q3_k_l", Q.Q3_K, 13),
                                 ("Q2_K", Q.Q2_K, 10), ("iq4_xs", Q.IQ4_XS, 30), ("IQ4_NL", Q.IQ4_NL, 25),
                                 ("q4_1", Q.Q4_1, 3), ("q5_0", Q.Q5_0, 8), ("Q5_1", Q.Q5_1, 9),
                                 ("q5_k", Q.Q5_K, 17), ("q4_k", Q.Q4_K, 15)]:
        q = parse_quant(name)
        assert (q.default, q.ftype) == (default, ftype), name
        assert parse_quant(name.swapcase()) is q
        assert LlamaFileType(q.ftype).name.endswith(q.name) or q.name == "F32"
    assert {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k", "q2_k"} <= set(QUANT_NAMES)
    assert all(parse_quant(name) is q for name, q in QUANT_NAMES.items())


@pytest.mark.parametrize("bad", ["x", "q8", "", "f8", "q4_k_x", "q7_0"])
def test_parse_quant_unknown(bad):
    with pytest.raises(KilnError) as e:
        parse_quant(bad)
    assert str(e.value) == f"unknown quantization type {bad!r} (choose from: {', '.join(QUANT_NAMES)})"
    assert "q4_k_m" in str(e.value) and "iq4_xs" in str(e.value)
    assert e.value.path is None


def test_file_types():
    assert FILE_TYPES == {
        Q.F32: LlamaFileType.ALL_F32, Q.F16: LlamaFileType.MOSTLY_F16, Q.BF16: LlamaFileType.MOSTLY_BF16,
        Q.Q8_0: LlamaFileType.MOSTLY_Q8_0, Q.Q4_0: LlamaFileType.MOSTLY_Q4_0,
    }
    assert [FILE_TYPES[q] for q in ALL_TYPES] == [0, 1, 32, 7, 2]


def test_block_size_and_row_nbytes():
    assert [block_size(q) for q in ALL_TYPES] == [1, 1, 1, 32, 32]
    assert block_size(Q.Q4_K) == 256 and row_nbytes(512, Q.Q4_K) == 2 * 144
    assert row_nbytes(4096, Q.F32) == 16384
    assert row_nbytes(4096, Q.F16) == row_nbytes(4096, Q.BF16) == 8192
    assert row_nbytes(4096, Q.Q8_0) == 128 * 34
    assert row_nbytes(4096, Q.Q4_0) == 128 * 18
    assert row_nbytes(33, Q.F16) == 66
    for q in ALL_TYPES:
        bs, ts = GGML_QUANT_SIZES[q]
        assert (block_size(q), row_nbytes(bs * 7, q)) == (bs, ts * 7)


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("ncols", [1, 16, 48, 4097])
def test_block_types_reject_ragged_rows(qtype, ncols):
    with pytest.raises(ValueError):
        quantize(np.ones((2, ncols), np.float32), qtype)
    with pytest.raises(ValueError):
        row_nbytes(ncols, qtype)


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16], ids=lambda q: q.name)
def test_float_types_take_any_row_length(ggml, qtype):
    x = np.random.default_rng(0).standard_normal((3, 45)).astype(np.float32)
    assert quantize(x, qtype).tobytes() == ggml.quantize(x, qtype)


# --- the ggml path kiln uses (convert.quants.encode) ----------------------------------------

@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.F16, Q.BF16], ids=lambda q: q.name)
def test_encode_through_ggml_is_bit_identical_to_numpy(ggml, qtype):
    """kiln routes the legacy types through ggml too (off the GIL): same bytes as before."""
    from convert.quants import encode

    rng = np.random.default_rng(12)
    x = rng.standard_t(3, size=(48, 1024)).astype(np.float32) * np.float32(0.05)
    x[3] = 0
    x[5, ::2] = np.float32(1e-39)
    assert encode(x, qtype).tobytes() == quantize(x, qtype).tobytes()


def test_ggml_quantization_releases_the_gil(ggml):
    """ctypes releases the GIL during ggml_quantize_chunk, so other threads run meanwhile (what
    lets kiln's quantization threads overlap): while one thread quantizes, this one keeps
    counting. A call holding the GIL would leave the counter at about zero until it returns."""
    from convert.quants import encode

    x = np.random.default_rng(1).standard_normal((4096, 2048)).astype(np.float32)
    done = threading.Event()
    rate, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.05:      # loops per second with the GIL to itself
        rate += 1
    rate /= time.perf_counter() - t0
    worker = threading.Thread(target=lambda: (encode(x, Q.Q4_K), done.set()))
    count, t0 = 0, time.perf_counter()
    worker.start()
    while not done.is_set():
        count += 1
    elapsed = time.perf_counter() - t0
    worker.join()
    share = count / (rate * elapsed)
    print(f"\nmain thread ran at {share:.0%} of its own speed during a {elapsed:.2f} s Q4_K call")
    # holding the GIL, ggml would leave this thread one 5 ms switch interval: about 1 %
    assert share > 0.05, (count, rate, elapsed)
