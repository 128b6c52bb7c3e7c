"""Find and read a model's weights, one tensor at a time.

`Checkpoint(model_dir)` reads only the safetensors headers / the pickles of `.bin` files; tensor
data is reached through memory maps (one per file, opened on first use) and `.array(name)` returns
a read-only view in the stored dtype that costs nothing until its rows are touched.
"""
from __future__ import annotations

import json
import mmap
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import torch_bin
from .errors import KilnError

__all__ = ["TensorInfo", "Checkpoint", "DTYPE_BITS", "NUMPY_DTYPES"]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str      # safetensors spelling: F32, F16, BF16, I64, ...
    path: Path      # the file holding the tensor


# Bits per element of every dtype safetensors knows (used to check headers).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64, "C128": 128,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

# dtypes `.array()` returns (BF16 as its raw uint16 bits); anything else is refused there.
NUMPY_DTYPES: dict[str, np.dtype] = {k: np.dtype(v) for k, v in {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}.items()}

ST_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
_MAX_HEADER = 100 * 1024 * 1024          # safetensors' own limit
_SHARD_RE = re.compile(r"-(\d{5})-of-(\d{5})\.(safetensors|bin)$")
# .bin files that sit next to the weights in training outputs and are not weights
_NOT_WEIGHTS = re.compile(r"^(training_args|optimizer|scheduler|rng_state.*|trainer_state)\.bin$")
_NO_WEIGHTS = "no model weights found (expected *.safetensors or pytorch_model*.bin)"


@dataclass(frozen=True)
class _StLoc:       # a safetensors tensor: contiguous bytes at an absolute file offset
    file: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _BinLoc:      # a .bin tensor: strided view on a zip member
    file: int
    t: torch_bin.BinTensor
    member: torch_bin.ZipMember


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _read_safetensors_header(path: Path) -> tuple[list[tuple[str, str, tuple[int, ...], int, int]], int]:
    """[(name, dtype, shape, abs_begin, nbytes)] in header order, and the file size."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            head = f.read(8)
            if size == 0:
                raise KilnError(path, "file is empty")
            if len(head) < 8:
                raise KilnError(path, f"truncated: the file is only {size} bytes, too short for a "
                                      "safetensors header")
            if head.startswith(b"version "):
                f.seek(0)
                if f.read(64).startswith(b"version https://git-lfs"):
                    raise KilnError(path, torch_bin._LFS_HINT)
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER:
                raise KilnError(path, f"corrupt safetensors header: header length {n} is absurd")
            if 8 + n > size:
                raise KilnError(path, f"truncated: the header needs {8 + n} bytes but the file "
                                      f"is only {size} bytes")
            raw = f.read(n)
    except FileNotFoundError as e:
        raise KilnError(path, "file not found") from e
    except IsADirectoryError as e:
        raise KilnError(path, "is a directory, expected a .safetensors file") from e

    def bad(msg: str) -> KilnError:
        return KilnError(path, f"corrupt safetensors header: {msg}")

    def pairs(items):
        d = {}
        for k, v in items:
            if k in d:
                raise bad(f"tensor '{k}' is listed twice")
            d[k] = v
        return d

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=pairs)
    except KilnError:
        raise
    except (UnicodeDecodeError, ValueError) as e:
        raise bad(f"not JSON ({e})") from e
    if not isinstance(header, dict):
        raise bad("not a JSON object")

    data_start = 8 + n
    data_size = size - data_start
    out = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise bad(f"entry for '{name}' is not an object")
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
        if missing:
            raise bad(f"tensor '{name}' lacks {', '.join(missing)}")
        dtype, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_BITS:
            raise bad(f"tensor '{name}' has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise bad(f"tensor '{name}' has a bad shape {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(type(o) is int and o >= 0 for o in offs) or offs[0] > offs[1]):
            raise bad(f"tensor '{name}' has bad data_offsets {offs!r}")
        want = (_numel(shape) * DTYPE_BITS[dtype] + 7) // 8
        if offs[1] - offs[0] != want:
            raise bad(f"tensor '{name}' is {dtype} {shape}, which is {want} bytes, but its "
                      f"data_offsets {offs} span {offs[1] - offs[0]}")
        out.append((name, dtype, tuple(shape), offs[0], offs[1]))

    prev_end, prev_name = 0, None
    for name, _, _, b, e in sorted(out, key=lambda t: (t[3], t[4])):
        if b == e:
            continue        # empty tensors occupy no bytes
        if b < prev_end:
            raise bad(f"tensors '{prev_name}' and '{name}' overlap")
        prev_end, prev_name = max(prev_end, e), name
    for name, _, _, b, e in out:
        if e > data_size:
            raise KilnError(path, f"truncated: tensor '{name}' ends at byte {data_start + e} but "
                                  f"the file is only {size} bytes")
    return [(name, dtype, shape, data_start + b, e - b) for name, dtype, shape, b, e in out], size


def _read_index(path: Path) -> dict[str, str]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise KilnError(path, f"cannot read the index: {e}") from e
    wm = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                           for k, v in wm.items()):
        raise KilnError(path, "cannot read the index: no \"weight_map\" of tensor name -> file")
    if not wm:
        raise KilnError(path, "cannot read the index: its weight_map is empty")
    return wm


def _check_shard_set(files: list[Path]) -> None:
    """Unindexed `x-00001-of-00003.ext` shards: every one of them must be present."""
    groups: dict[tuple[str, str, int], set[int]] = {}
    for p in files:
        m = _SHARD_RE.search(p.name)
        if m:
            stem = p.name[: m.start()]
            groups.setdefault((stem, m.group(3), int(m.group(2))), set()).add(int(m.group(1)))
    for (stem, ext, total), have in groups.items():
        for i in range(1, total + 1):
            if i not in have:
                missing = files[0].parent / f"{stem}-{i:05d}-of-{total:05d}.{ext}"
                raise KilnError(missing, f"shard file missing (found {len(have)} of {total} "
                                         "shards)")


def _discover(model_dir: Path) -> tuple[str, list[Path], Path | None, dict[str, str] | None]:
    """(format, files, index path, weight_map)."""
    if model_dir.is_file():
        fmt = "safetensors" if model_dir.suffix == ".safetensors" else "bin"
        return fmt, [model_dir], None, None
    if not model_dir.is_dir():
        raise KilnError(model_dir, "no such directory")

    for fmt, index_name in (("safetensors", ST_INDEX), ("bin", BIN_INDEX)):
        index = model_dir / index_name
        if fmt == "bin":
            # a safetensors checkpoint without an index still wins over a .bin index
            if list(model_dir.glob("*.safetensors")):
                break
        if index.is_file():
            wm = _read_index(index)
            files = [model_dir / f for f in sorted(set(wm.values()))]
            for f in files:
                if not f.is_file():
                    raise KilnError(f, f"shard file missing: {index_name} lists it but it does "
                                       "not exist")
            return fmt, files, index, wm

    st = sorted(model_dir.glob("*.safetensors"))
    st = [p for p in st if p.is_file()]
    if st:
        single = model_dir / "model.safetensors"
        files = [single] if single in st else st
        _check_shard_set(files)
        return "safetensors", files, None, None

    single = model_dir / "pytorch_model.bin"
    if single.is_file():
        return "bin", [single], None, None
    bins = [p for p in sorted(model_dir.glob("pytorch_model*.bin")) if p.is_file()]
    if not bins:
        bins = [p for p in sorted(model_dir.glob("*.bin"))
                if p.is_file() and not _NOT_WEIGHTS.match(p.name)]
    if bins:
        _check_shard_set(bins)
        return "bin", bins, None, None
    raise KilnError(model_dir, _NO_WEIGHTS)


class Checkpoint:
    """The weights of one model directory. Opening reads headers only.

    `.tensors` maps every tensor name to its `TensorInfo`, in file order (shards in order);
    `.files` lists the weight files; `.total_bytes` is the sum of the tensors' data bytes;
    `.format` is "safetensors" or "bin". `.array(name)` returns a read-only memory-mapped view.
    """

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        self.format, self.files, self.index_path, weight_map = _discover(self.model_dir)
        self.tensors: dict[str, TensorInfo] = {}
        self._locs: dict[str, _StLoc | _BinLoc] = {}
        self._maps: dict[int, mmap.mmap | bytes] = {}
        self._compressed: dict[tuple[int, str], bytes] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.total_bytes = 0

        for i, path in enumerate(self.files):
            if self.format == "safetensors":
                entries, _ = _read_safetensors_header(path)
                for name, dtype, shape, offset, nbytes in entries:
                    self._add(name, TensorInfo(name, shape, dtype, path),
                              _StLoc(i, offset, nbytes), nbytes)
            else:
                tb = torch_bin.read_torch_bin(path)
                for t in tb.tensors:
                    self._add(t.name, TensorInfo(t.name, t.shape, t.dtype, path),
                              _BinLoc(i, t, tb.members[t.member]), t.nbytes)

        if weight_map is not None:
            for name, fname in weight_map.items():
                info = self.tensors.get(name)
                shard = self.model_dir / fname
                if info is None or info.path != shard:
                    raise KilnError(shard, f"{self.index_path.name} places tensor '{name}' in "
                                           "this file, but the file does not contain it")

    def _add(self, name: str, info: TensorInfo, loc, nbytes: int) -> None:
        old = self.tensors.get(name)
        if old is not None:
            raise KilnError(info.path, f"tensor '{name}' is also in {old.path.name}; the same "
                                       "tensor in two shards")
        self.tensors[name] = info
        self._locs[name] = loc
        self.total_bytes += nbytes

    # --- data ---

    def _buffer(self, i: int):
        buf = self._maps.get(i)
        if buf is None:
            with self._lock:
                if self._closed:
                    raise ValueError("checkpoint is closed")
                buf = self._maps.get(i)
                if buf is None:
                    path = self.files[i]
                    try:
                        buf = torch_bin.open_mmap(path)
                    except (OSError, ValueError) as e:
                        raise KilnError(path, f"cannot map the file: {e}") from e
                    self._maps[i] = buf
        return buf

    def array(self, name: str) -> np.ndarray:
        """Read-only ndarray of tensor `name` in its stored dtype (BF16 as uint16 bits),
        memory-mapped: nothing is read until elements are touched."""
        if self._closed:
            raise ValueError("checkpoint is closed")
        info = self.tensors[name]
        np_dtype = NUMPY_DTYPES.get(info.dtype)
        if np_dtype is None:
            raise KilnError(info.path, f"tensor '{name}' has dtype {info.dtype}, which kiln "
                                       "cannot convert")
        loc = self._locs[name]
        buf = self._buffer(loc.file)
        if isinstance(loc, _StLoc):
            if loc.offset + loc.nbytes > len(buf):
                raise KilnError(info.path, f"truncated: tensor '{name}' ends at byte "
                                           f"{loc.offset + loc.nbytes} but the file is only "
                                           f"{len(buf)} bytes")
            a = np.frombuffer(buf, dtype=np_dtype, count=_numel(info.shape), offset=loc.offset)
            a = a.reshape(info.shape)
            a.flags.writeable = False
            return a
        m = loc.member
        if m.compress_type == 0:
            start = torch_bin.member_data_offset(buf, info.path, m)
            return torch_bin.tensor_view(buf, start, loc.t, np_dtype)
        key = (loc.file, m.name)
        data = self._compressed.get(key)
        if data is None:
            data = torch_bin.read_compressed_member(info.path, m)
            self._compressed[key] = data
        return torch_bin.tensor_view(data, 0, loc.t, np_dtype)

    # --- lifetime ---

    def close(self) -> None:
        with self._lock:
            self._closed = True
            maps, self._maps = self._maps, {}
            self._compressed.clear()
        for buf in maps.values():
            if isinstance(buf, mmap.mmap):
                try:
                    buf.close()
                except BufferError:
                    pass    # arrays still view it; the map goes away with the last of them

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Checkpoint({str(self.model_dir)!r}, format={self.format!r}, "
                f"{len(self.tensors)} tensors in {len(self.files)} files, "
                f"{self.total_bytes} bytes)")
