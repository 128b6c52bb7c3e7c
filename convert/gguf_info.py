"""Read a GGUF file's metadata and tensor summary (for `kiln inspect` and the runtime)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from .errors import KilnError

_HEAD = 8  # array items shown


def _field_value(field: gguf.ReaderField) -> Any:
    types = field.types
    if not types:
        return None
    if types[0] == gguf.GGUFValueType.ARRAY:
        n = len(field.data)
        item_type = types[1] if len(types) > 1 else None
        if item_type == gguf.GGUFValueType.STRING:
            head = [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data[:_HEAD]]
        else:
            head = [field.parts[i].tolist()[0] for i in field.data[:_HEAD]]
        name = item_type.name.lower() if item_type is not None else "?"
        return {"array": name, "length": n, "head": head}
    if types[0] == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    value = field.parts[field.data[0]].tolist()[0]
    return bool(value) if types[0] == gguf.GGUFValueType.BOOL else value


def read_info(path: str | os.PathLike, with_tensors: bool = False) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise KilnError(path, "no such file")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError/struct errors on garbage
        raise KilnError(path, f"not a readable GGUF file ({exc})") from None
    metadata = {}
    version = None
    for name, field in reader.fields.items():
        if name == "GGUF.version":
            version = _field_value(field)
        elif not name.startswith("GGUF."):
            metadata[name] = _field_value(field)
    types: dict[str, dict[str, int]] = {}
    tensors, n_params, n_bytes = [], 0, 0
    for t in reader.tensors:
        kind = t.tensor_type.name
        row = types.setdefault(kind, {"count": 0, "bytes": 0})
        row["count"] += 1
        row["bytes"] += int(t.n_bytes)
        n_params += int(t.n_elements)
        n_bytes += int(t.n_bytes)
        if with_tensors:
            tensors.append({"name": t.name, "type": kind,
                            "shape": [int(x) for x in np.asarray(t.shape)]})
    info = {"version": version, "file_bytes": path.stat().st_size, "n_tensors": len(reader.tensors),
            "n_params": n_params, "bits_per_weight": 8 * n_bytes / max(n_params, 1),
            "metadata": metadata, "types": types}
    if with_tensors:
        info["tensors"] = tensors
    return info
