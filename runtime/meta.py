"""What the runtime needs to know about a GGUF: read once from its metadata.

kiln's converter writes everything (template, stops, eos ids, banned ids, sampling) into the
file. For GGUFs made by other tools, a family kiln knows is recognized by architecture and
name and its knowledge applied; any other model uses its own `tokenizer.chat_template`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from convert.errors import KilnError
from convert.families import family_for_gguf

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


def _value(field_: Any) -> Any:
    types = field_.types
    if types[0] == gguf.GGUFValueType.ARRAY:
        if types[1] == gguf.GGUFValueType.STRING:
            return [bytes(field_.parts[i]).decode("utf-8", "replace") for i in field_.data]
        return [field_.parts[i].tolist()[0] for i in field_.data]
    if types[0] == gguf.GGUFValueType.STRING:
        return bytes(field_.parts[field_.data[0]]).decode("utf-8", "replace")
    value = field_.parts[field_.data[0]].tolist()[0]
    return bool(value) if types[0] == gguf.GGUFValueType.BOOL else value


def read_meta(path: str | os.PathLike) -> ModelMeta:
    path = Path(path)
    if not path.is_file():
        raise KilnError(path, "no such file")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:
        raise KilnError(path, f"not a readable GGUF file ({exc})") from None
    fields = reader.fields

    def get(key: str, default: Any = None) -> Any:
        return _value(fields[key]) if key in fields else default

    arch = get("general.architecture", "")
    name = get("general.name", "") or path.stem
    tokens = get("tokenizer.ggml.tokens", [])
    types = get("tokenizer.ggml.token_type", [])
    specials = {i: t for i, (t, ty) in enumerate(zip(tokens, types)) if ty in PARSED_TYPES}
    model = get("tokenizer.ggml.model", "")
    bos, eos = get("tokenizer.ggml.bos_token_id"), get("tokenizer.ggml.eos_token_id")
    meta = ModelMeta(
        path=path, arch=arch, name=name, family=get("kiln.family"),
        chat_template=get("tokenizer.chat_template") or "", bos_id=bos, eos_id=eos,
        add_bos=bool(get("tokenizer.ggml.add_bos_token", get("tokenizer.ggml.model") == "llama")),
        eos_ids=list(get("kiln.eos_token_ids", [eos] if eos is not None else [])),
        stop_strings=list(get("kiln.stop_strings", [])),
        banned_ids=list(get("kiln.banned_token_ids", [])),
        sampling={k[len("kiln.sampling."):]: round(float(_value(f)), 6) for k, f in fields.items()
                  if k.startswith("kiln.sampling.")},
        context_length=int(get(f"{arch}.context_length", 2048)),
        tokenizer=get("kiln.tokenizer") or _tokenizer_kind(fields, get),
        special_texts=sorted({t for t in specials.values() if t}, key=len, reverse=True),
        # llama.cpp: true by default for SPM / UGM vocabularies, always false for BPE
        add_space_prefix=(model in ("llama", "t5")
                          and bool(get("tokenizer.ggml.add_space_prefix", True))),
        token_texts=specials,
        control_ids=frozenset(i for i, ty in enumerate(types) if ty in (CONTROL, UNKNOWN)),
        byte_ids={int(t[3:5], 16): i for i, (t, ty) in enumerate(zip(tokens, types))
                  if ty == BYTE and len(t) == 6 and t.startswith("<0x") and t.endswith(">")},
        hf_json=get("tokenizer.huggingface.json"),
        prompt_segments=get("kiln.prompt_segments", ""),
    )
    if bos is not None and bos < len(tokens):
        meta.token_texts[bos] = tokens[bos]
    if eos is not None and eos < len(tokens):
        meta.token_texts[eos] = tokens[eos]
    if meta.family is None:
        _apply_family_knowledge(meta)
    if not meta.chat_template:
        log.warning("%s has no chat template; using plain text turns", path.name)
        meta.chat_template = PLAIN_TEMPLATE
    return meta


def _tokenizer_kind(fields, get) -> str:
    """Without kiln.tokenizer: "huggingface" when the GGUF records a SentencePiece normalizer that
    llama.cpp's SPM tokenizer does not apply (kiln's converter writes these keys, and the
    equivalent tokenizer.json, for such a tokenizer.model; see convert/vocab.py)."""
    if (get("tokenizer.ggml.model") == "llama" and get("tokenizer.huggingface.json")
            and ("tokenizer.ggml.precompiled_charsmap" in fields
                 or get("tokenizer.ggml.remove_extra_whitespaces"))):
        return "huggingface"
    return "native"


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
