"""A GGUF file's metadata, tensor types and quantization mixture (for `kiln inspect`)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from .errors import KilnError
from .gguf_file import GGUFFile

_HEAD = 8  # array items shown


def _show_value(value: Any, types: tuple) -> Any:
    if types[0] == gguf.GGUFValueType.ARRAY:
        sub = types[1]
        head = value[:_HEAD]
        head = head.tolist() if isinstance(head, np.ndarray) else list(head)
        return {"array": sub.name.lower(), "length": len(value), "head": head}
    return value


def tensor_kind(name: str) -> str:
    """'blk.3.attn_v.weight' -> 'attn_v.weight': the per-layer role of a tensor."""
    return re.sub(r"^blk\.\d+\.", "", name)


def read_info(path: str | os.PathLike, with_tensors: bool = False) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise KilnError(path, "no such file")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise KilnError(path, "not a readable GGUF file (no GGUF magic at its start)")
    g = GGUFFile(path)
    try:
        metadata = {k: _show_value(v, g.types[k]) for k, v in g.fields.items()}
        types: dict[str, dict[str, int]] = {}
        mixture: dict[str, dict[str, int]] = {}
        tensors, n_params, n_bytes = [], 0, 0
        for t in g.tensors:
            kind = t.qtype.name
            row = types.setdefault(kind, {"count": 0, "bytes": 0})
            row["count"] += 1
            row["bytes"] += t.nbytes
            per = mixture.setdefault(tensor_kind(t.name), {})
            per[kind] = per.get(kind, 0) + 1
            n_params += t.n_elements
            n_bytes += t.nbytes
            if with_tensors:
                tensors.append({"name": t.name, "type": kind, "shape": list(reversed(t.shape))})
        info = {"version": g.version, "file_bytes": path.stat().st_size,
                "n_tensors": len(g.tensors), "n_params": n_params,
                "bits_per_weight": 8 * n_bytes / max(n_params, 1),
                "metadata": metadata, "types": types, "mixture": mixture}
    finally:
        g.close()
    if with_tensors:
        info["tensors"] = tensors
    return info
