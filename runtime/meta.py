"""What the runtime needs to know about a GGUF: read once from its metadata.

kiln's converter writes everything (template, stops, eos ids, banned ids, sampling) into the
file. For GGUFs made by other tools, a family kiln knows is recognized by architecture and
name and its knowledge applied; any other model uses its own `tokenizer.chat_template`.
"""
from __future__ import annotations

import logging
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from convert.errors import KilnError
from convert.families import BY_NAME, family_for_gguf

log = logging.getLogger(__name__)

CONTROL, USER_DEFINED = int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED)
UNKNOWN, BYTE = int(gguf.TokenType.UNKNOWN), int(gguf.TokenType.BYTE)
# Token types llama.cpp matches in raw text when parsing specials (llama-vocab.cpp builds its
# special-token cache from CONTROL | USER_DEFINED | UNKNOWN): "<unk>" in a message is one too.
PARSED_TYPES = (CONTROL, USER_DEFINED, UNKNOWN)

# Last resort for a model with no template at all: plain text turns.
PLAIN_TEMPLATE = ("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")


@dataclass
class ModelMeta:
    path: Path
    arch: str
    name: str
    family: str | None
    chat_template: str
    bos_id: int | None
    eos_id: int | None
    add_bos: bool
    eos_ids: list[int]
    stop_strings: list[str]
    banned_ids: list[int]
    sampling: dict[str, float]
    context_length: int
    tokenizer: str                      # "native" or "huggingface"
    special_texts: list[str] = field(default_factory=list)  # texts llama.cpp parses as tokens
    # llama.cpp puts a space in front of the text (SentencePiece-style vocab) and its detokenizer
    # takes one leading space off again: decoding must do the same to give the text back.
    add_space_prefix: bool = False
    control_ids: frozenset[int] = frozenset()   # CONTROL and UNKNOWN: never from a user's text
    byte_ids: dict[int, int] = field(default_factory=dict)  # byte value -> its "<0xXX>" token
    token_texts: dict[int, str] = field(default_factory=dict)  # only specials, for templates
    hf_json: str | None = None
    prompt_segments: str = ""           # "message": each message tokenized on its own
    # ISO 639-1 codes the model is made for, strongest first (kiln.languages, else the
    # family's); empty when nothing says
    languages: list[str] = field(default_factory=list)


# GGUF value types (gguf.GGUFValueType): fixed-size ones as struct formats
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
           11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
          10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


class StringArray:
    """A GGUF array of strings left in the file: only the entries asked for are decoded (gguf's
    GGUFReader builds an object for each of a 100k vocabulary, seconds per load)."""

    def __init__(self, buf, offset: int, count: int):
        self._buf, self._offset, self.count = buf, offset, count

    def __len__(self) -> int:
        return self.count

    def tolist(self) -> list[str]:
        found = self.pick(range(self.count))
        return [found[i] for i in range(self.count)]

    def pick(self, wanted) -> dict[int, str]:
        wanted = set(wanted)
        out: dict[int, str] = {}
        if not wanted:
            return out
        buf, pos, last = self._buf, self._offset, max(wanted)
        unpack = struct.Struct("<Q").unpack_from
        for i in range(min(last + 1, self.count)):
            (n,) = unpack(buf, pos)
            if i in wanted:
                out[i] = bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8", "replace")
            pos += 8 + n
        return out


def read_kv(path: Path) -> dict[str, Any]:
    """Every metadata key of a GGUF (v2/v3), read straight from the mapped file: scalars and
    strings as Python values, numeric arrays as numpy arrays, string arrays as StringArray
    (walked only past, never decoded unless asked)."""
    with open(path, "rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:                           # empty file
            raise KilnError(path, "not a readable GGUF file (empty)") from None
    try:
        return _parse_kv(buf)
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise KilnError(path, f"not a readable GGUF file ({exc})") from None


def _parse_kv(buf) -> dict[str, Any]:
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError("no GGUF magic")
    version, _n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported")
    pos, out = 24, {}
    u64, u32 = struct.Struct("<Q").unpack_from, struct.Struct("<I").unpack_from

    def string(at: int) -> tuple[str, int]:
        (n,) = u64(buf, at)
        return bytes(buf[at + 8:at + 8 + n]).decode("utf-8", "replace"), at + 8 + n

    for _ in range(n_kv):
        key, pos = string(pos)
        (vtype,) = u32(buf, pos)
        pos += 4
        if vtype == _STRING:
            out[key], pos = string(pos)
        elif vtype in _SCALAR:
            fmt = _SCALAR[vtype]
            (out[key],) = struct.unpack_from(fmt, buf, pos)
            pos += struct.calcsize(fmt)
        elif vtype == _ARRAY:
            (etype,) = u32(buf, pos)
            (count,) = u64(buf, pos + 4)
            pos += 12
            if etype == _STRING:
                out[key] = StringArray(buf, pos, count)
                for _ in range(count):               # walk past: lengths only
                    (n,) = u64(buf, pos)
                    pos += 8 + n
            elif etype in _NUMPY:
                dt = np.dtype(_NUMPY[etype])
                out[key] = np.frombuffer(buf, dt, count, pos)
                pos += dt.itemsize * count
            else:
                raise ValueError(f"key {key}: arrays of type {etype} are not supported")
        else:
            raise ValueError(f"key {key}: unknown value type {vtype}")
    return out


def read_meta(path: str | os.PathLike) -> ModelMeta:
    path = Path(path)
    if not path.is_file():
        raise KilnError(path, "no such file")
    kv = read_kv(path)

    def get(key: str, default: Any = None) -> Any:
        value = kv.get(key, default)
        return value.tolist() if isinstance(value, (np.ndarray, StringArray)) else value

    arch = get("general.architecture", "")
    name = get("general.name", "") or path.stem
    tokens = kv.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, StringArray):
        tokens = StringArray(b"", 0, 0)
    types = np.asarray(kv.get("tokenizer.ggml.token_type", np.zeros(0, np.int32)))
    special_ids = np.flatnonzero(np.isin(types, PARSED_TYPES)).tolist()
    byte_candidates = np.flatnonzero(types == BYTE).tolist()
    model = get("tokenizer.ggml.model", "")
    bos, eos = get("tokenizer.ggml.bos_token_id"), get("tokenizer.ggml.eos_token_id")
    texts = tokens.pick(special_ids + byte_candidates
                        + [i for i in (bos, eos) if isinstance(i, int)])
    specials = {i: texts[i] for i in special_ids if i in texts}
    hf_json = get("tokenizer.huggingface.json")
    meta = ModelMeta(
        path=path, arch=arch, name=name, family=get("kiln.family"),
        chat_template=get("tokenizer.chat_template") or "", bos_id=bos, eos_id=eos,
        add_bos=bool(get("tokenizer.ggml.add_bos_token", model == "llama")),
        eos_ids=list(get("kiln.eos_token_ids", [eos] if eos is not None else [])),
        stop_strings=list(get("kiln.stop_strings", [])),
        banned_ids=list(get("kiln.banned_token_ids", [])),
        sampling={k[len("kiln.sampling."):]: round(float(v), 6) for k, v in kv.items()
                  if k.startswith("kiln.sampling.")},
        context_length=int(get(f"{arch}.context_length", 2048)),
        # The model's own tokenizer.json, when the GGUF carries it, is what kiln tokenizes
        # with: exact by construction, whatever its shape. llama.cpp's native tokenizer only
        # for GGUFs without one (its parity is measured by scripts/tokenizer_parity.py).
        tokenizer="huggingface" if hf_json else "native",
        special_texts=sorted({t for t in specials.values() if t}, key=len, reverse=True),
        # llama.cpp: true by default for SPM / UGM vocabularies, always false for BPE
        add_space_prefix=(model in ("llama", "t5")
                          and bool(get("tokenizer.ggml.add_space_prefix", True))),
        token_texts=specials,
        control_ids=frozenset(np.flatnonzero(np.isin(types, (CONTROL, UNKNOWN))).tolist()),
        byte_ids={int(t[3:5], 16): i for i in byte_candidates
                  if len(t := texts.get(i, "")) == 6 and t.startswith("<0x") and t.endswith(">")},
        hf_json=hf_json,
        prompt_segments=get("kiln.prompt_segments", ""),
        languages=_string_list(get("kiln.languages", [])),
    )
    if bos is not None and bos in texts:
        meta.token_texts[bos] = texts[bos]
    if eos is not None and eos in texts:
        meta.token_texts[eos] = texts[eos]
    if meta.family is None:
        _apply_family_knowledge(meta)
    if not meta.languages and meta.family in BY_NAME:   # older kiln file, or recognized
        meta.languages = list(BY_NAME[meta.family].languages)
    if not meta.chat_template:
        log.warning("%s has no chat template; using plain text turns", path.name)
        meta.chat_template = PLAIN_TEMPLATE
    return meta


def _string_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(x) for x in value or []]


def _apply_family_knowledge(meta: ModelMeta) -> None:
    """A GGUF made elsewhere: if it is one of our families, use that family's knowledge."""
    fam_cls = family_for_gguf(meta.arch, meta.name)
    if fam_cls is None:
        return
    fam = fam_cls.for_gguf()
    meta.family = fam.name
    meta.chat_template = fam.chat_template(None) or meta.chat_template
    meta.stop_strings = fam.stop_strings()
    meta.banned_ids = fam.banned_ids()
    meta.sampling = fam.sampling_defaults()
    meta.prompt_segments = fam.prompt_segments()
    log.info("%s: recognized as %s from its architecture and name", meta.path.name, fam.name)
