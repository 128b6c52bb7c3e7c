"""Importance matrices (llama.cpp's `llama-imatrix` output) read for quantization.

Two formats, both read as llama-quantize reads them (common/imatrix-loader.cpp and
tools/quantize/quantize.cpp of llama.cpp 0.3.36's vendored tree):

- GGUF (current): keys `imatrix.datasets` [strings], `imatrix.chunk_count`, `imatrix.chunk_size`
  (all three required); per weight tensor `<name>.in_sum2` F32 [ne0 * n_expert] = sum of x^2
  and `<name>.counts` F32 [n_expert].  Weights = in_sum2 / round(count), or 1 where count is 0.
- legacy .dat: int32 n_entries; per entry int32 len, name, int32 ncall, int32 nval,
  float32[nval] (= mean * ncall); optional trailer int32 chunk count, int32 len, dataset name.
  Weights = values / ncall (values as stored when ncall is 0).

`Imatrix.check(tensors)` matches the entries against a model's tensors and `metadata()` gives
the `quantize.imatrix.*` keys llama-quantize writes.

`save(...)` writes the GGUF format exactly as llama-imatrix's `save_imatrix` lays it out
(tools/imatrix/imatrix.cpp, ggml/src/gguf.cpp): keys general.type = "imatrix",
imatrix.datasets, imatrix.chunk_count (u32), imatrix.chunk_size (u32), in that order; entries
sorted by name (byte order), each as `<name>.in_sum2` F32 ne [ne0, n_mat] then `<name>.counts`
F32 ne [1, n_mat]; trailing dims of 1 dropped (ggml_n_dims); data aligned to 32 bytes.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import KilnError

GGUF_MAGIC = b"GGUF"
GGUF_ALIGNMENT = 32
_GGUF_U32, _GGUF_STRING, _GGUF_ARRAY, _GGML_F32 = 4, 8, 9, 0


@dataclass
class Imatrix:
    path: Path
    entries: dict[str, np.ndarray]           # tensor name -> float32 weights (ne0 * n_expert)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False

    def weights(self, name: str, ncols: int, n_expert: int = 1) -> np.ndarray | None:
        """The weights for tensor `name`, shaped (n_expert, ncols), or None when it has none."""
        w = self.entries.get(name)
        if w is None or w.size != ncols * n_expert:
            return None
        return w.reshape(n_expert, ncols)

    def check(self, tensors: list[tuple[str, tuple[int, ...], bool]]) -> None:
        """Refuse an imatrix made for another model.

        `tensors`: (name, numpy shape, will be quantized) for every tensor of the model.  An entry
        naming no tensor, or whose size is not ne0 * n_expert of a tensor that is quantized, is
        an error naming the tensor (llama-quantize stops on the size, except for token_embd).
        """
        shapes = {name: (shape, q) for name, shape, q in tensors}
        for name, w in self.entries.items():
            if name not in shapes:
                raise KilnError(self.path, f"entry {name!r} matches no tensor of this model "
                                           "(an importance matrix made for another model?)")
            shape, quantized = shapes[name]
            want = int(shape[-1]) * (int(shape[0]) if len(shape) == 3 else 1)
            if quantized and w.size != want and name not in ("token_embd.weight",
                                                             "per_layer_token_embd.weight"):
                raise KilnError(self.path, f"entry {name!r} has {w.size} values but the tensor "
                                           f"needs {want} (an importance matrix made for another model?)")

    def metadata(self) -> dict[str, object]:
        """The quantize.imatrix.* keys llama-quantize records (file, dataset, counts)."""
        md: dict[str, object] = {"quantize.imatrix.file": str(self.path)[:127]}
        if self.datasets:
            md["quantize.imatrix.dataset"] = self.datasets[0][:127]
        md["quantize.imatrix.entries_count"] = len(self.entries)
        if self.chunk_count > 0:
            md["quantize.imatrix.chunks_count"] = self.chunk_count
        return md


def load(path: str | os.PathLike) -> Imatrix:
    path = Path(path)
    if not path.is_file():
        raise KilnError(path, "no such file (expected an importance matrix from llama-imatrix)")
    with open(path, "rb") as f:
        magic = f.read(4)
    im = _load_gguf(path) if magic == GGUF_MAGIC else _load_legacy(path)
    for name, w in im.entries.items():
        if not np.isfinite(w).all():
            raise KilnError(path, f"entry {name!r} holds non-finite values (a corrupt importance matrix?)")
    return im


def _load_gguf(path: Path) -> Imatrix:
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:
        raise KilnError(path, f"not a readable importance matrix (corrupt GGUF: {exc})") from None
    fields = reader.fields
    missing = [k for k in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")
               if k not in fields]
    if missing:
        raise KilnError(path, f"not an importance matrix: missing key {missing[0]}")

    def scalar(key: str) -> int:
        f = fields[key]
        return int(f.parts[f.data[0]][0])

    ds = fields["imatrix.datasets"]
    datasets = [bytes(ds.parts[i]).decode("utf-8", "replace") for i in ds.data]
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        name = t.name
        for suffix, into in ((".in_sum2", sums), (".counts", counts)):
            if name.endswith(suffix):
                if t.tensor_type != gguf.GGMLQuantizationType.F32:
                    raise KilnError(path, f"tensor {name!r} must be F32, not {t.tensor_type.name}")
                into[name[: -len(suffix)]] = np.asarray(t.data, dtype=np.float32).reshape(-1)
    if not sums and not counts:
        raise KilnError(path, "not an importance matrix: it holds no .in_sum2 / .counts tensors")
    entries: dict[str, np.ndarray] = {}
    for name in sorted(set(sums) | set(counts)):
        if name not in sums or name not in counts:
            raise KilnError(path, f"entry {name!r} has {'no counts' if name in sums else 'no sums'}")
        s, c = sums[name], counts[name]
        if c.size == 0 or s.size % c.size:
            raise KilnError(path, f"entry {name!r}: {s.size} sums do not split into {c.size} experts")
        per = s.reshape(c.size, -1)
        n = np.array([float(int(_lround(x))) for x in c], dtype=np.float32)   # as llama.cpp: lround
        w = np.ones_like(per)
        ok = n > 0
        w[ok] = per[ok] / n[ok, None]
        entries[name] = w.reshape(-1)
    return Imatrix(path, entries, datasets, scalar("imatrix.chunk_count"),
                   scalar("imatrix.chunk_size"), legacy=False)


def _lround(x: float) -> int:
    """C's lround: halves away from zero."""
    return int(np.sign(x) * np.floor(abs(float(x)) + 0.5))


def _load_legacy(path: Path) -> Imatrix:
    data = path.read_bytes()
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise KilnError(path, f"not a readable importance matrix: file ends inside {what}")
        pos += n
        return data[pos - n: pos]

    def i32(what: str) -> int:
        return struct.unpack("<i", take(4, what))[0]

    n_entries = i32("the entry count")
    if n_entries < 1 or n_entries > 1_000_000:
        raise KilnError(path, "not an importance matrix (neither GGUF nor a legacy .dat with entries)")
    entries: dict[str, np.ndarray] = {}
    for k in range(n_entries):
        n = i32(f"entry {k + 1}")
        if n < 0 or n > 4096:
            raise KilnError(path, f"not a readable importance matrix: entry {k + 1} has a name of {n} bytes")
        name = take(n, f"entry {k + 1}'s name").decode("utf-8", "replace")
        ncall, nval = i32(f"entry {name!r}"), i32(f"entry {name!r}")
        if nval < 1:
            raise KilnError(path, f"entry {name!r} has {nval} values")
        vals = np.frombuffer(take(4 * nval, f"entry {name!r}'s values"), dtype="<f4").astype(np.float32)
        entries[name] = vals / np.float32(ncall) if ncall > 0 else vals.copy()
    chunks, datasets = 0, []
    if pos + 4 <= len(data):
        chunks = struct.unpack("<i", data[pos: pos + 4])[0]
        pos += 4
        if pos + 4 <= len(data):
            n = struct.unpack("<i", data[pos: pos + 4])[0]
            pos += 4
            if 0 < n <= len(data) - pos:
                datasets.append(data[pos: pos + n].split(b"\0")[0].decode("utf-8", "replace"))
    return Imatrix(path, entries, datasets, chunks, 0, legacy=True)


def save(path: str | os.PathLike, sums: dict[str, np.ndarray], counts: dict[str, np.ndarray],
         datasets: list[str], chunk_count: int, chunk_size: int) -> Path:
    """Write an imatrix GGUF as llama-imatrix does: `sums[name]` is Σx² shaped (n_mat, ne0) (or
    flat, n_mat * ne0), `counts[name]` the rows seen per matrix (n_mat,).  Written to a temp file
    next to `path`, renamed at the end: an interrupted save leaves nothing."""
    path = Path(path)
    names = sorted(sums, key=lambda n: n.encode("utf-8"))
    if set(names) != set(counts):
        raise ValueError("sums and counts name different tensors")
    tensors: list[tuple[str, tuple[int, int], np.ndarray]] = []
    for name in names:
        c = np.ascontiguousarray(counts[name], dtype=np.float32).reshape(-1)
        s = np.ascontiguousarray(sums[name], dtype=np.float32).reshape(-1)
        if c.size == 0 or s.size == 0 or s.size % c.size:
            continue                                 # llama.cpp skips nval == 0 or nmat == 0
        tensors.append((f"{name}.in_sum2", (s.size // c.size, c.size), s))
        tensors.append((f"{name}.counts", (1, c.size), c))

    out = bytearray()
    u32, u64 = struct.Struct("<I").pack, struct.Struct("<Q").pack

    def string(text: str) -> bytes:
        b = text.encode("utf-8")
        return u64(len(b)) + b

    out += GGUF_MAGIC + u32(3) + struct.pack("<qq", len(tensors), 4)
    out += string("general.type") + u32(_GGUF_STRING) + string("imatrix")
    out += string("imatrix.datasets") + u32(_GGUF_ARRAY) + u32(_GGUF_STRING) + u64(len(datasets))
    out += b"".join(string(d) for d in datasets)
    out += string("imatrix.chunk_count") + u32(_GGUF_U32) + u32(int(chunk_count))
    out += string("imatrix.chunk_size") + u32(_GGUF_U32) + u32(int(chunk_size))
    offset = 0
    for name, ne, data in tensors:
        dims = list(ne)
        while len(dims) > 1 and dims[-1] == 1:       # ggml_n_dims
            dims.pop()
        out += string(name) + u32(len(dims)) + b"".join(struct.pack("<q", d) for d in dims)
        out += u32(_GGML_F32) + u64(offset)
        offset += _pad(data.nbytes)
    out += bytes(_pad(len(out)) - len(out))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(out)
            for _, _, data in tensors:
                f.write(data.astype("<f4", copy=False).tobytes())
                f.write(bytes(_pad(data.nbytes) - data.nbytes))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise KilnError(path, f"cannot write the importance matrix ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _pad(n: int) -> int:
    return (n + GGUF_ALIGNMENT - 1) // GGUF_ALIGNMENT * GGUF_ALIGNMENT
