"""Read PyTorch zip checkpoints (`torch.save`, torch >= 1.6) without torch and without running
pickle code.

A zip checkpoint holds `<prefix>/data.pkl` (the pickled state dict) and one member
`<prefix>/data/<key>` per storage, stored uncompressed and 64-byte aligned. The pickle refers to
storages through persistent ids ``('storage', storage_type, key, location, numel)`` and rebuilds
tensors with `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`.

`data.pkl` is parsed by `_SafeUnpickler`, whose `find_class` hands out harmless stand-ins for the
handful of globals a state dict needs and raises `KilnError` for every other global, so nothing in
the file is ever imported or called. The result is a list of `BinTensor` descriptions; the data is
only touched later, through `tensor_view` on a memory map of the file.
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import mmap
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import KilnError

__all__ = ["BinTensor", "TorchBin", "read_torch_bin", "member_data_offset", "tensor_view",
           "ITEMSIZE"]

# Bytes per element, keyed by the safetensors dtype spelling kiln uses everywhere.
ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1,
    "C64": 8, "C128": 16,
}

# `torch.<Name>Storage` (legacy typed storages, how torch.save names the storage type).
_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "F64", "FloatStorage": "F32", "HalfStorage": "F16",
    "BFloat16Storage": "BF16", "LongStorage": "I64", "IntStorage": "I32",
    "ShortStorage": "I16", "CharStorage": "I8", "ByteStorage": "U8", "BoolStorage": "BOOL",
    "ComplexFloatStorage": "C64", "ComplexDoubleStorage": "C128",
}

# `torch.<dtype>` objects, pickled by `_rebuild_tensor_v3` (dtypes without a legacy storage class).
_TORCH_DTYPES: dict[str, str] = {
    "float64": "F64", "double": "F64", "float32": "F32", "float": "F32",
    "float16": "F16", "half": "F16", "bfloat16": "BF16",
    "int64": "I64", "long": "I64", "int32": "I32", "int": "I32", "int16": "I16", "short": "I16",
    "int8": "I8", "uint8": "U8", "bool": "BOOL",
    "uint16": "U16", "uint32": "U32", "uint64": "U64",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "float8_e8m0fnu": "F8_E8M0",
    "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "complex64": "C64", "cfloat": "C64", "complex128": "C128", "cdouble": "C128",
}

_LEGACY_HINT = "old PyTorch format; re-save it with torch>=1.6 or as safetensors"
_LFS_HINT = "this is a Git LFS pointer, not the weights (run `git lfs pull` or download again)"

# Keys under which training scripts commonly nest the weights, most specific first.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "params")


@dataclass(frozen=True)
class BinTensor:
    """Where one tensor of a zip checkpoint lives: a strided view on one storage member."""
    name: str
    dtype: str                  # safetensors spelling
    shape: tuple[int, ...]
    stride: tuple[int, ...]     # in elements
    offset: int                 # storage offset, in elements of `dtype`
    member: str                 # zip member holding the storage
    storage_nbytes: int         # bytes of the storage that the pickle declares

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * ITEMSIZE[self.dtype]


@dataclass(frozen=True)
class ZipMember:
    name: str
    header_offset: int          # offset of the local file header
    compress_type: int
    compress_size: int
    file_size: int


@dataclass
class TorchBin:
    path: Path
    tensors: list[BinTensor]
    members: dict[str, ZipMember]   # only the storage members the tensors use


# --- harmless stand-ins for the globals a state dict pickle names ---------------------------

class _Frozen:
    """Base for stand-ins: no instance dict, and the pickle BUILD opcode cannot touch them."""
    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError("unexpected BUILD on a tensor placeholder")


class _StorageType(_Frozen):
    __slots__ = ("dtype", "label")

    def __init__(self, dtype: str, label: str):
        self.dtype = dtype          # "U8" for untyped (byte) storages
        self.label = label


class _DType(_Frozen):
    __slots__ = ("dtype",)

    def __init__(self, dtype: str):
        self.dtype = dtype


class _Storage(_Frozen):
    __slots__ = ("key", "member", "dtype", "nbytes")

    def __init__(self, key: str, member: str, dtype: str, nbytes: int):
        self.key, self.member, self.dtype, self.nbytes = key, member, dtype, nbytes


class _Tensor(_Frozen):
    __slots__ = ("storage", "dtype", "offset", "shape", "stride")

    def __init__(self, storage: _Storage, dtype: str, offset: int, shape, stride):
        self.storage, self.dtype, self.offset = storage, dtype, offset
        self.shape, self.stride = shape, stride


class _Placeholder(_Frozen):
    """A class the pickle may name as an argument but never needs to call (torch.Tensor ...)."""
    __slots__ = ("label",)

    def __init__(self, label: str):
        self.label = label


class _Callable(_Frozen):
    """An allowed global that the pickle may call; wraps one of our own functions."""
    __slots__ = ("label", "fn")

    def __init__(self, label: str, fn):
        self.label, self.fn = label, fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def _int_tuple(v, what: str) -> tuple[int, ...]:
    if not isinstance(v, (tuple, list)) or not all(type(x) is int and x >= 0 for x in v):
        raise pickle.UnpicklingError(f"bad tensor {what} {v!r}")
    return tuple(v)


def _make_tensor(storage, offset, size, stride, dtype: str | None = None) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    if type(offset) is not int or offset < 0:
        raise pickle.UnpicklingError(f"bad storage offset {offset!r}")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise pickle.UnpicklingError(f"tensor size {shape} and stride {strides} disagree")
    return _Tensor(storage, dtype or storage.dtype, offset, shape, strides)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, dtype=None, metadata=None):
    if not isinstance(dtype, _DType):
        raise pickle.UnpicklingError("_rebuild_tensor_v3 without a dtype")
    return _make_tensor(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, *_ignored):
    if not isinstance(data, _Tensor):
        raise pickle.UnpicklingError("parameter rebuilt from something that is not a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state=None):
    if not isinstance(func, _Callable) or not isinstance(args, tuple):
        raise pickle.UnpicklingError("bad _rebuild_from_type_v2 call")
    return func(*args)


def _ordered_dict(*args, **kwargs):
    return collections.OrderedDict(*args, **kwargs)


_CALLABLES = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("collections", "OrderedDict"): _ordered_dict,
}
_PLACEHOLDERS = {("torch", "Tensor"), ("torch._tensor", "Tensor"),
                 ("torch.nn.parameter", "Parameter"), ("torch.nn", "Parameter")}
_UNTYPED = {("torch", "UntypedStorage"), ("torch.storage", "UntypedStorage"),
            ("torch.storage", "TypedStorage"), ("torch", "TypedStorage"),
            ("torch.storage", "_UntypedStorage"), ("torch", "_UntypedStorage")}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, path: Path, prefix: str, infos: dict[str, zipfile.ZipInfo]):
        super().__init__(io.BytesIO(data))
        self._path = path
        self._prefix = prefix
        self._infos = infos
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        key = (module, name)
        label = f"{module}.{name}"
        if key in _CALLABLES:
            return _Callable(label, _CALLABLES[key])
        if key in _PLACEHOLDERS:
            return _Placeholder(label)
        if key in _UNTYPED:
            return _StorageType("U8", label)
        if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name], label)
        if module == "torch" and name in _TORCH_DTYPES:
            return _DType(_TORCH_DTYPES[name])
        # protocol <= 2 pickles spell some modules the Python 2 way ('commands' for subprocess)
        module, name = _compat_pickle.NAME_MAPPING.get(
            key, (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
        raise KilnError(self._path, f"refusing to load: the pickle asks for '{module}.{name}', "
                                    "which is not tensor data")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise pickle.UnpicklingError(f"persistent id names no storage type: {stype!r}")
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError(f"bad storage reference {pid!r}")
        got = self._storages.get(key)
        if got is not None:
            return got
        member = f"{self._prefix}/data/{key}"
        info = self._infos.get(member)
        if info is None:
            raise KilnError(self._path, f"corrupt checkpoint: storage '{key}' is missing "
                                        f"from the archive (no member {member})")
        nbytes = numel * ITEMSIZE[stype.dtype]
        if info.file_size < nbytes:
            raise KilnError(self._path, f"corrupt checkpoint: storage '{key}' should hold "
                                        f"{nbytes} bytes but its member has {info.file_size}")
        st = _Storage(key, member, stype.dtype, nbytes)
        self._storages[key] = st
        return st


# --- reading ---------------------------------------------------------------------------------

def _sniff_not_zip(path: Path, head: bytes, size: int) -> KilnError:
    """Explain why a .bin that is not a readable zip cannot be read."""
    if size == 0:
        return KilnError(path, "file is empty")
    if head.startswith(b"version https://git-lfs"):
        return KilnError(path, _LFS_HINT)
    if head[:1] == b"\x80" or head[257:262] == b"ustar":
        return KilnError(path, _LEGACY_HINT)
    if head.startswith(b"PK\x03\x04"):
        return KilnError(path, f"truncated or corrupt zip archive: the file is {size} bytes and "
                               "its zip directory cannot be read (incomplete download?)")
    return KilnError(path, "not a PyTorch checkpoint (expected a zip archive written by torch.save)")


def _pick_state_dict(obj, path: Path) -> dict:
    if not isinstance(obj, dict):
        raise KilnError(path, f"does not hold a state dict (the pickle is a {type(obj).__name__})")
    if any(isinstance(v, _Tensor) for v in obj.values()):
        return obj
    nested = {k: v for k, v in obj.items()
              if isinstance(v, dict) and any(isinstance(x, _Tensor) for x in v.values())}
    if len(nested) == 1:
        return next(iter(nested.values()))
    for k in _NESTED_KEYS:
        if k in nested:
            return nested[k]
    if nested:
        keys = ", ".join(repr(k) for k in nested)
        raise KilnError(path, f"holds several tensor dicts ({keys}); cannot tell which is the model")
    raise KilnError(path, "holds no tensors")


def read_torch_bin(path: str | os.PathLike) -> TorchBin:
    """Parse a zip checkpoint's directory and pickle. Reads no tensor data."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
            if not head.startswith(b"PK\x03\x04"):
                raise _sniff_not_zip(path, head, size)
            f.seek(0)
            try:
                zf = zipfile.ZipFile(f)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
                raise _sniff_not_zip(path, head, size) from e
            with zf:
                infos = {i.filename: i for i in zf.infolist()}
                pkls = sorted((n for n in infos if n.endswith("data.pkl")
                               and n.count("/") <= 1), key=len)
                if not pkls:
                    raise KilnError(path, "zip archive has no data.pkl; not a torch.save checkpoint")
                pkl_name = pkls[0]
                prefix = pkl_name[: -len("data.pkl")].rstrip("/")
                bo = infos.get(f"{prefix}/byteorder")
                if bo is not None and zf.read(bo).strip() not in (b"little", b""):
                    raise KilnError(path, "saved on a big-endian machine; kiln reads only "
                                          "little-endian checkpoints")
                try:
                    data = zf.read(pkl_name)
                except (zipfile.BadZipFile, OSError, ValueError, EOFError,
                        NotImplementedError) as e:
                    raise KilnError(path, f"cannot read {pkl_name}: {e}") from e
    except FileNotFoundError as e:
        raise KilnError(path, "file not found") from e
    except IsADirectoryError as e:
        raise KilnError(path, "is a directory, expected a checkpoint file") from e

    unpickler = _SafeUnpickler(data, path, prefix, infos)
    try:
        top = unpickler.load()
    except KilnError:
        raise
    except RecursionError as e:
        raise KilnError(path, "corrupt data.pkl: nesting too deep") from e
    except Exception as e:  # any malformed pickle
        raise KilnError(path, f"corrupt data.pkl: {type(e).__name__}: {e}") from e

    sd = _pick_state_dict(top, path)
    tensors: list[BinTensor] = []
    members: dict[str, ZipMember] = {}
    for name, t in sd.items():
        if not isinstance(t, _Tensor):
            continue
        if not isinstance(name, str):
            raise KilnError(path, f"corrupt checkpoint: tensor key {name!r} is not a string")
        if t.dtype not in ITEMSIZE:
            raise KilnError(path, f"tensor '{name}' has an unknown dtype {t.dtype}")
        item = ITEMSIZE[t.dtype]
        extent = 0
        if all(t.shape):
            extent = 1 + sum((d - 1) * s for d, s in zip(t.shape, t.stride))
        if extent and (t.offset + extent) * item > t.storage.nbytes:
            raise KilnError(path, f"corrupt checkpoint: tensor '{name}' extends past its storage "
                                  f"({(t.offset + extent) * item} > {t.storage.nbytes} bytes)")
        info = infos[t.storage.member]
        if t.storage.member not in members:
            end = info.header_offset + 30 + len(info.orig_filename.encode()) + info.compress_size
            if end > size:
                raise KilnError(path, f"truncated: storage {t.storage.member} ends past byte "
                                      f"{end} but the file is only {size} bytes")
            members[t.storage.member] = ZipMember(t.storage.member, info.header_offset,
                                                  info.compress_type, info.compress_size,
                                                  info.file_size)
        tensors.append(BinTensor(name, t.dtype, t.shape, t.stride, t.offset,
                                 t.storage.member, t.storage.nbytes))
    return TorchBin(path, tensors, members)


def member_data_offset(buf, path: Path, m: ZipMember) -> int:
    """Offset of a stored member's first data byte, from its local file header."""
    h = m.header_offset
    if h + 30 > len(buf) or bytes(buf[h:h + 4]) != b"PK\x03\x04":
        raise KilnError(path, f"corrupt zip: no local header for {m.name} at byte {h}")
    name_len, extra_len = struct.unpack("<HH", buf[h + 26:h + 30])
    start = h + 30 + name_len + extra_len
    if start + m.compress_size > len(buf):
        raise KilnError(path, f"truncated: {m.name} ends at byte {start + m.compress_size} "
                              f"but the file is only {len(buf)} bytes")
    return start


def read_compressed_member(path: Path, m: ZipMember) -> bytes:
    """A compressed storage member (rare: torch never writes them) read into memory."""
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.read(m.name)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise KilnError(path, f"cannot read {m.name}: {e}") from e


def tensor_view(buf, start: int, t: BinTensor, np_dtype: np.dtype) -> np.ndarray:
    """Read-only ndarray for `t`, a view on `buf` (an mmap or bytes) whose storage begins at
    byte `start`. Costs nothing until the elements are touched."""
    item = np_dtype.itemsize
    numel = 1
    for d in t.shape:
        numel *= d
    if numel == 0:
        a = np.empty(t.shape, dtype=np_dtype)
        a.flags.writeable = False
        return a
    begin = start + t.offset * item
    contiguous = []
    acc = 1
    for d in reversed(t.shape):
        contiguous.append(acc)
        acc *= d
    contiguous.reverse()
    if all(d == 1 or s == c for d, s, c in zip(t.shape, t.stride, contiguous)):
        a = np.frombuffer(buf, dtype=np_dtype, count=numel, offset=begin).reshape(t.shape)
    else:
        extent = 1 + sum((d - 1) * s for d, s in zip(t.shape, t.stride))
        base = np.frombuffer(buf, dtype=np_dtype, count=extent, offset=begin)
        a = np.lib.stride_tricks.as_strided(base, shape=t.shape,
                                            strides=tuple(s * item for s in t.stride),
                                            writeable=False)
    if a.flags.writeable:
        a.flags.writeable = False
    return a


def open_mmap(path: Path) -> mmap.mmap:
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
