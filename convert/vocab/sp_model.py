"""SentencePiece `tokenizer.model` -> a reading: the ModelProto decoded by a small protobuf reader.

Only the fields kiln uses are read (below); checked against the sentencepiece library itself in
tests/test_tokenizer_parity.py and tests/test_vocab.py.
"""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .tokens import T_NORMAL, Built, Tok

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# SentencePiece ModelProto, read by hand (field numbers from sentencepiece_model.proto):
#   ModelProto      1 pieces (repeated SentencePiece), 2 trainer_spec, 3 normalizer_spec
#   SentencePiece   1 piece (string), 2 score (float), 3 type (enum, default NORMAL)
#                   Type: NORMAL=1 UNKNOWN=2 CONTROL=3 USER_DEFINED=4 UNUSED=5 BYTE=6 (= gguf.TokenType)
#   TrainerSpec     3 model_type (UNIGRAM=1 BPE=2 WORD=3 CHAR=4), 24 treat_whitespace_as_suffix,
#                   35 byte_fallback, 40 unk_id (0), 41 bos_id (1), 42 eos_id (2), 43 pad_id (-1)
#   NormalizerSpec  1 name, 2 precompiled_charsmap, 3 add_dummy_prefix (true),
#                   4 remove_extra_whitespaces (true), 5 escape_whitespaces (true)
# --------------------------------------------------------------------------------------------

SP_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


@dataclass
class SentencePieceModel:
    pieces: list[tuple[str, float, int]]      # (piece, score, type)
    model_type: int = 1
    byte_fallback: bool = False
    treat_whitespace_as_suffix: bool = False
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value): int for varints, bytes otherwise."""
    pos = 0
    n = len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        fnum, wtype = key >> 3, key & 7
        if fnum == 0:
            raise ValueError("field number 0")
        if wtype == 0:
            val, pos = _varint(buf, pos)
        elif wtype == 2:
            ln, pos = _varint(buf, pos)
            if pos + ln > n:
                raise ValueError("length-delimited field runs past the end")
            val = buf[pos:pos + ln]
            pos += ln
        elif wtype == 5:
            if pos + 4 > n:
                raise ValueError("truncated fixed32")
            val = buf[pos:pos + 4]
            pos += 4
        elif wtype == 1:
            if pos + 8 > n:
                raise ValueError("truncated fixed64")
            val = buf[pos:pos + 8]
            pos += 8
        else:
            raise ValueError(f"unsupported wire type {wtype}")
        yield fnum, wtype, val


def _int32(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def _expect(wtype: int, want: int, what: str) -> None:
    if wtype != want:
        raise ValueError(f"{what}: wire type {wtype}, expected {want}")


# TrainerSpec varint fields kiln reads: field number -> (attribute, decoder)
TRAINER_FIELDS = {3: ("model_type", int), 24: ("treat_whitespace_as_suffix", bool),
                  35: ("byte_fallback", bool), 40: ("unk_id", _int32), 41: ("bos_id", _int32),
                  42: ("eos_id", _int32), 43: ("pad_id", _int32)}


def parse_sentencepiece_model(data: bytes) -> SentencePieceModel:
    """Decode a SentencePiece `tokenizer.model`; ValueError when it is not one."""
    pieces: list[tuple[str, float, int]] = []
    sp = SentencePieceModel(pieces=pieces)
    for fnum, wtype, val in _fields(data):
        if fnum == 1:
            _expect(wtype, 2, "ModelProto.pieces")
            text, score, ptype = None, 0.0, T_NORMAL
            for f, w, v in _fields(val):
                if f == 1:
                    _expect(w, 2, "SentencePiece.piece")
                    text = v.decode("utf-8")
                elif f == 2:
                    _expect(w, 5, "SentencePiece.score")
                    score = struct.unpack("<f", v)[0]
                elif f == 3:
                    _expect(w, 0, "SentencePiece.type")
                    ptype = v
            if text is None:
                raise ValueError(f"piece #{len(pieces)} has no text")
            if not 1 <= ptype <= 6:
                raise ValueError(f"piece #{len(pieces)} has unknown type {ptype}")
            pieces.append((text, score, ptype))
        elif fnum == 2:
            _expect(wtype, 2, "ModelProto.trainer_spec")
            for f, w, v in _fields(val):
                if w == 0 and f in TRAINER_FIELDS:
                    attr, read = TRAINER_FIELDS[f]
                    setattr(sp, attr, read(v))
        elif fnum == 3:
            _expect(wtype, 2, "ModelProto.normalizer_spec")
            for f, w, v in _fields(val):
                if f == 1 and w == 2:
                    sp.normalizer_name = v.decode("utf-8", "replace")
                elif f == 2 and w == 2:
                    sp.precompiled_charsmap = bytes(v)
                elif f == 3 and w == 0:
                    sp.add_dummy_prefix = bool(v)
                elif f == 4 and w == 0:
                    sp.remove_extra_whitespaces = bool(v)
                elif f == 5 and w == 0:
                    sp.escape_whitespaces = bool(v)
        # 4 self_test_data, 5 denormalizer_spec: not needed
    if not pieces:
        raise ValueError("no pieces")
    return sp


def from_sentencepiece(sp: SentencePieceModel, path: Path) -> Built:
    toks = {i: Tok(t, float(s), ty) for i, (t, s, ty) in enumerate(sp.pieces)}
    kind = SP_MODEL_TYPES.get(sp.model_type, str(sp.model_type))
    if kind not in ("unigram", "bpe"):
        log.warning("%s: SentencePiece model type %s; llama.cpp tokenizes it as BPE-like "
                    "score-ordered merging", path, kind)
    elif kind == "unigram":
        log.warning("%s: SentencePiece Unigram model; llama.cpp's SPM tokenizer merges bigrams "
                    "by score instead of Viterbi, so some segmentations will differ", path)
    if sp.precompiled_charsmap:
        log.warning("%s: normalizer %r (precompiled charsmap) is not applied by llama.cpp's SPM "
                    "tokenizer", path, sp.normalizer_name)
    if sp.treat_whitespace_as_suffix:
        log.warning("%s: treat_whitespace_as_suffix is not supported by llama.cpp's SPM tokenizer",
                    path)
    defaults = {}
    for key, idx in (("unk", sp.unk_id), ("bos", sp.bos_id), ("eos", sp.eos_id), ("pad", sp.pad_id)):
        if 0 <= idx < len(sp.pieces):
            defaults[key] = idx
    return Built(model="llama", pre="default", toks=toks,
                  add_space_prefix=sp.add_dummy_prefix, defaults=defaults,
                  unigram=kind == "unigram", sp=sp)
